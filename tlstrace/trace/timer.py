"""Tracing for a while: switched on with a limit (PUT /api/trace's `for_seconds`, the file's
`trace_on_for_seconds`), tracing switches itself off when the limit runs out. Operators forget
to switch tracing off, and tracing costs CPU and exposes calls."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tlstrace.trace.tracer import SwitchedBy

if TYPE_CHECKING:
    from tlstrace.trace.tracer import TraceManager

log = logging.getLogger("tlstrace.trace")


class TracingTimer:
    """Every switch goes through `switch`, which replaces any limit in force."""

    def __init__(self, tracing: TraceManager, loop: asyncio.AbstractEventLoop) -> None:
        self.tracing = tracing
        self.loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._until: float | None = None  # wall-clock time.time()

    def switch(
        self, on: bool, for_seconds: float | None = None, by: SwitchedBy | None = None
    ) -> None:
        """On or off; on with `for_seconds`: off again after that many seconds. Without a limit
        a switch cancels the one in force. `by` (who switched) goes in the log line."""
        self._cancel()
        self.tracing.set_enabled(on, by)
        if on and for_seconds and self.tracing.enabled:
            self._until = time.time() + for_seconds
            self._handle = self.loop.call_later(for_seconds, self._expired, for_seconds)
            log.info("tracing is on for %s", format_seconds(for_seconds))

    @property
    def until(self) -> float | None:
        """When tracing switches itself off (time.time()), None when it will not."""
        return self._until if self.tracing.enabled else None

    def _expired(self, seconds: float) -> None:
        self._handle = None
        self._until = None
        if self.tracing.enabled:
            log.info("tracing switched off: its %s limit ran out", format_seconds(seconds))
            self.tracing.set_enabled(
                False, SwitchedBy("limit", f"its {format_seconds(seconds)} limit running out")
            )

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._until = None


def format_seconds(seconds: float) -> str:
    """600 -> '10m', 5400 -> '1h30m', 90.5 -> '1m30.5s'."""
    whole = int(seconds)
    rest = seconds - whole
    h, m, s = whole // 3600, whole % 3600 // 60, whole % 60
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "")
    sec = s + rest
    if sec or not out:
        out += f"{sec:g}s"
    return out
