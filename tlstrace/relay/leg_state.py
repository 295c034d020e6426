"""What every connection core shares, sans-IO: the partial-message and send timeouts and the
backpressure state of one end (its transport is driven by an adapter, relay/leg.py)."""

from __future__ import annotations

from tlstrace.relay.connection import CloseReason
from tlstrace.relay.context import RelayContext


class LegState:
    """Timers of one end, on the context's clock (0.0: not running)."""

    def __init__(self, ctx: RelayContext, name: str, timeout_kind: str) -> None:
        self.ctx = ctx
        #: what the timeout messages call the other end ("peer", "backend", "local")
        self.name = name
        #: how a partial-message timeout of this end is counted in framing_errors
        self.timeout_kind = timeout_kind
        self.partial_since = 0.0  # an incomplete message started waiting
        self.blocked_since = 0.0  # our writes to this end started piling up
        #: we stopped reading this end (backpressure): its partial message is our doing
        self.reading_paused = False
        #: set when the core wants its connection closed: (reason, detail, abort)
        self.close_request: tuple[CloseReason, str, bool] | None = None

    def note_partial(self, partial: bool, now: float) -> None:
        if not partial:
            self.partial_since = 0.0
        elif not self.partial_since:
            self.partial_since = now

    def drained(self) -> bool:
        """Nothing read from this end waits here: no half-read message (at shutdown, a
        connection closes once both its ends are drained)."""
        return not self.partial_since

    def writing_paused(self, now: float) -> None:
        self.blocked_since = now

    def writing_resumed(self) -> None:
        self.blocked_since = 0.0

    def reading_changed(self, paused: bool, now: float) -> None:
        self.reading_paused = paused
        if not paused and self.partial_since:  # the wait for the rest starts again now
            self.partial_since = now

    def overdue(self, now: float) -> tuple[CloseReason, str] | None:
        """A send or partial-message timeout that has passed, if any."""
        cfg = self.ctx.config
        if self.blocked_since and now - self.blocked_since > cfg.tls_send_timeout / 1000:
            return (
                CloseReason.SEND_TIMEOUT,
                f"{self.name} left data unread for over {cfg.tls_send_timeout} ms",
            )
        if (
            self.partial_since
            and not self.reading_paused
            and now - self.partial_since > cfg.tcp_max_msg_time
        ):
            return CloseReason.MESSAGE_TIMEOUT, f"incomplete message from {self.name}"
        return None

    def next_deadline(self) -> float | None:
        """The earliest time `handle_timer` can find something overdue."""
        cfg = self.ctx.config
        due: float | None = None
        if self.blocked_since:
            due = self.blocked_since + cfg.tls_send_timeout / 1000
        if self.partial_since and not self.reading_paused:
            t = self.partial_since + cfg.tcp_max_msg_time
            if due is None or t < due:
                due = t
        return due

    def handle_timer(self, now: float) -> None:
        """Check the timeouts; what is overdue becomes the close request."""
        if self.close_request is not None:
            return
        due = self.overdue(now)
        if due is not None:
            reason, detail = due
            if reason is CloseReason.MESSAGE_TIMEOUT:
                self.ctx.stats.framing_errors[self.timeout_kind] += 1
            self.close_request = (reason, detail, reason is CloseReason.SEND_TIMEOUT)
