"""What every leg adapter shares: its transport, backpressure towards its partner, and the
sweeper's timeout check. The logic is in the leg's core (relay/leg_state.py and its
subclasses); a leg moves bytes and calls the clock."""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
from collections.abc import Callable
from typing import cast

from tlstrace.relay.connection import CloseReason
from tlstrace.relay.host import RelayHost
from tlstrace.relay.leg_state import LegState
from tlstrace.relay.partner import Partner


def protocol_factory(factory: Callable[[], BaseLeg]) -> Callable[[], asyncio.BaseProtocol]:
    """`factory` as the loop's protocol factory. A leg has every method of asyncio.Protocol
    but does not derive from it: mypyc compiles a class with a Python base class into a
    plain Python class, and the legs are the hot path."""
    return factory  # type: ignore[return-value]


def unread_bytes(transport: asyncio.BaseTransport) -> int:
    """Bytes the peer sent that the kernel holds for this socket, not read yet (FIONREAD)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile: nothing more can be read
        return 0
    return int.from_bytes(got, sys.byteorder, signed=True)


class BaseLeg:
    """An asyncio protocol (see `protocol_factory`), compiled to a native class."""

    transport: asyncio.Transport

    def __init__(self, relay: RelayHost, core: LegState) -> None:
        self.relay = relay
        self.ctx = relay.ctx
        #: the core, as every leg has one (subclasses keep it as `core`, with its own type)
        self.leg_state = core
        self.partner: Partner | None = None
        self.closed = False
        self.live = False  # a usable transport is attached

    @property
    def name(self) -> str:
        """What the timeout messages call the other end."""
        return self.leg_state.name

    def attach(self, transport: asyncio.BaseTransport) -> asyncio.Transport:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        self.live = True
        limit = self.ctx.config.conn_buffer_limit
        t.set_write_buffer_limits(high=limit, low=limit // 4)
        return t

    # -- backpressure. A leg reads its end only while everything it reads can go somewhere:
    # its own queue is within bounds and its partner is not blocked. Whenever one of those
    # changes, update_reading() computes the answer again from the state, so no pause can be
    # left behind by a leg that went away.

    def eof_received(self) -> bool | None:
        """The peer shut its side: the transport closes (asyncio.Protocol's default)."""
        return None

    def pause_writing(self) -> None:
        self.leg_state.writing_paused(self.ctx.clock())
        if self.partner is not None:
            self.partner.update_reading()

    def resume_writing(self) -> None:
        self.leg_state.writing_resumed()
        if self.partner is not None:
            self.partner.update_reading()

    def is_blocked(self) -> bool:
        return bool(self.leg_state.blocked_since) or self.backlog_out()

    def backlog_out(self) -> bool:
        """Too much queued here for this end, waiting for the transport (none by default)."""
        return False

    def backlog_in(self) -> bool:
        """Too much read from this end, waiting for the partner (none by default)."""
        return False

    # -- shutdown: a connection closes once nothing its ends sent is still on its way

    def drained(self) -> bool:
        """Nothing its peer sent is on its way through this leg: no bytes unread in the socket,
        nothing half-read or held in the core. A leg still connecting is not drained."""
        if self.closed:
            return True
        if not self.live:
            return False
        return self.leg_state.drained() and unread_bytes(self.transport) == 0

    def settled(self) -> bool:
        """This leg and its partner are drained: closing it now loses nothing in flight."""
        partner = self.partner
        return self.drained() and (partner is None or partner.drained())

    def update_reading(self) -> None:
        if not self.live or self.closed:
            return
        partner = self.partner
        pause = self.backlog_in() or (partner is not None and partner.is_blocked())
        if pause == self.leg_state.reading_paused:
            return
        self.leg_state.reading_changed(pause, self.ctx.clock())
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- timeouts --------------------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called about once a second by the sweeper (`now` on the context's clock)."""
        if not self.closed:
            self.leg_state.handle_timer(now)
            self.after_core()

    def after_core(self) -> None:
        """Act on what the core asked for (by default: a close)."""
        req = self.leg_state.close_request
        if req is not None and not self.closed:
            self.close(*req)

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
                self.ctx.stats.bytes_dropped[reason.label] += unsent
            self.transport.abort()
        else:
            self.transport.close()
