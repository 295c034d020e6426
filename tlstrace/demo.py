"""`tlstrace demo`: the whole loop on one machine (built with the tracing work)."""

from __future__ import annotations

import sys


def run() -> int:
    print("tlstrace demo: not available yet", file=sys.stderr)
    return 1
