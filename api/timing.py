"""The time limit on tracing as GET /api/trace shows it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any


def time_limit(until: float | None) -> dict[str, Any]:
    """`until` (UTC) and `remaining_seconds`, both None without a limit (`until`: when tracing
    switches itself off, as time.time())."""
    if until is None:
        return {"until": None, "remaining_seconds": None}
    return {
        "until": datetime.fromtimestamp(until, UTC).replace(microsecond=0),
        "remaining_seconds": round(max(0.0, until - time.time()), 1),
    }
