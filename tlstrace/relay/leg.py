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

    # -- backpressure: our transport's buffer towards this end is full, so stop reading the
    # partner; the partner's is full, so stop reading this end

    def pause_writing(self) -> None:
        self.blocked_since = self.relay.loop.time()
        if self.partner is not None:
            self.partner.pause_reading()

    def resume_writing(self) -> None:
        self.blocked_since = 0.0
        if self.partner is not None:
            self.partner.resume_reading()

    def pause_reading(self) -> None:
        if self.live and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_reading(self) -> None:
        if self.live and not self.closed and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False
            if self.partial_since:  # the wait for the rest starts again now
                self.partial_since = self.relay.loop.time()

    # -- timeouts --------------------------------------------------------------------------------

    def overdue(self, now: float) -> tuple[CloseReason, str] | None:
        """A send or partial-message timeout that has passed, if any."""
        cfg = self.relay.config
        if self.blocked_since and now - self.blocked_since > cfg.tls_send_timeout / 1000:
            return (CloseReason.SEND_TIMEOUT,
                    f"{self.name} left data unread for over {cfg.tls_send_timeout} ms")
        if (self.partial_since and not self.reading_paused
                and now - self.partial_since > cfg.tcp_max_msg_time):
            return CloseReason.MESSAGE_TIMEOUT, f"incomplete message from {self.name}"
        return None

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the sweeper."""
        if not self.closed:
            due = self.overdue(now)
            if due is not None:
                self.close(*due, abort=due[0] is CloseReason.SEND_TIMEOUT)

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
