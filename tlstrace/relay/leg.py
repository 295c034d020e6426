"""What every leg shares: its transport, backpressure towards its partner, and the timeouts
that apply to both TLS and plain legs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from tlstrace.relay.connection import CloseReason
from tlstrace.relay.partner import Partner

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay


class BaseLeg(asyncio.Protocol):
    transport: asyncio.Transport
    #: what the timeout messages call the other end
    name = "peer"

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.partner: Partner | None = None
        self.closed = False
        self.live = False  # a usable transport is attached
        self.partial_since = 0.0  # loop time an incomplete message started waiting
        self.blocked_since = 0.0  # loop time our writes to this end started piling up
        #: we stopped reading this end (backpressure): its partial message is our doing
        self.reading_paused = False

    def attach(self, transport: asyncio.BaseTransport) -> asyncio.Transport:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        self.live = True
        limit = self.relay.config.conn_buffer_limit
        t.set_write_buffer_limits(high=limit, low=limit // 4)
        return t

    def note_partial(self, partial: bool) -> None:
        if not partial:
            self.partial_since = 0.0
        elif not self.partial_since:
            self.partial_since = self.relay.loop.time()

    # -- backpressure. A leg reads its end only while everything it reads can go somewhere:
    # its own queue is within bounds and its partner is not blocked. Whenever one of those
    # changes, update_reading() computes the answer again from the state, so no pause can be
    # left behind by a leg that went away.

    def pause_writing(self) -> None:
        self.blocked_since = self.relay.loop.time()
        if self.partner is not None:
            self.partner.update_reading()

    def resume_writing(self) -> None:
        self.blocked_since = 0.0
        if self.partner is not None:
            self.partner.update_reading()

    def is_blocked(self) -> bool:
        return bool(self.blocked_since) or self.backlog_out()

    def backlog_out(self) -> bool:
        """Too much queued here for this end, waiting for the transport (none by default)."""
        return False

    def backlog_in(self) -> bool:
        """Too much read from this end, waiting for the partner (none by default)."""
        return False

    def update_reading(self) -> None:
        if not self.live or self.closed:
            return
        partner = self.partner
        pause = self.backlog_in() or (partner is not None and partner.is_blocked())
        if pause == self.reading_paused:
            return
        self.reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
            if self.partial_since:  # the wait for the rest starts again now
                self.partial_since = self.relay.loop.time()

    # -- timeouts --------------------------------------------------------------------------------

    def overdue(self, now: float) -> tuple[CloseReason, str] | None:
        """A send or partial-message timeout that has passed, if any."""
        cfg = self.relay.config
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

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the sweeper."""
        if not self.closed:
            due = self.overdue(now)
            if due is not None:
                if due[0] is CloseReason.MESSAGE_TIMEOUT:
                    self.relay.stats.framing_errors[self.timeout_kind] += 1
                self.close(*due, abort=due[0] is CloseReason.SEND_TIMEOUT)

    #: how a partial-message timeout of this leg is counted in framing_errors
    timeout_kind = "message_timeout"

    def close(self, reason: CloseReason, detail: str = "", abort: bool = False) -> None:
        """End this leg; `abort` drops what its peer did not read instead of waiting."""
        raise NotImplementedError

    def shut_transport(self, reason: CloseReason, abort: bool) -> None:
        """Close the transport after it flushes, or abort it (a peer that does not read would
        keep the socket and its buffer forever): what it held is counted as dropped."""
        if not self.live:
            return
        if abort:
            unsent = self.transport.get_write_buffer_size()
            if unsent:
                self.relay.stats.bytes_dropped[reason.label] += unsent
            self.transport.abort()
        else:
            self.transport.close()
