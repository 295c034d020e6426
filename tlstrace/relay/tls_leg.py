"""One TLS connection on a plain TCP transport: the asyncio adapter of relay/core.TlsCore.

The TLS session (tls/session.py) runs OpenSSL through memory BIOs instead of asyncio's TLS
transport: per-connection memory stays small (asyncio's TLS protocol allocates a 256 KiB read
buffer per connection), each TLS record counts as one read for `tls_max_msg_chunks`, the first
bytes can be inspected before OpenSSL sees them, and OpenSSL's key-log lines are tied to the
connection whose handshake runs. This class only moves bytes, calls the clock, dispatches the
core's events and arms the handshake timer; the sweeper (relay/sweeper.py) checks the other
timeouts about once a second (one pass over all legs costs less than a timer re-armed per
read).
"""

from __future__ import annotations

import asyncio
import ssl
import time

from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.core import TlsCore, keepalive_burst
from tlstrace.relay.hooks import MessageTracer
from tlstrace.relay.host import RelayHost
from tlstrace.relay.leg import BaseLeg
from tlstrace.tls.certinfo import CertInfo
from tlstrace.tls.session import OPEN, ContextChooser, TlsSession

__all__ = ["TlsLeg", "keepalive_burst"]


class TlsLeg(BaseLeg):
    """The TLS side of a relayed connection (server side for clients, client side for peers)."""

    core: TlsCore

    def __init__(
        self,
        relay: RelayHost,
        conn: Connection,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        chooser: ContextChooser | None = None,
    ) -> None:
        ctx = relay.ctx
        self.conn = conn
        self.server_side = server_side
        session = TlsSession(
            context,
            server_side=server_side,
            handshake_timeout_ms=ctx.config.tls_handshake_timeout,
            now=ctx.clock(),
            server_hostname=server_hostname,
            chooser=chooser,
            keylog=ctx.keylog,
            keylog_lines=conn.keylog,
        )
        core = TlsCore(
            ctx,
            conn,
            session,
            self,
            direction_in=self.relay_direction_in,
            direction_out=self.relay_direction_out,
        )
        super().__init__(relay, core)
        self.core = core
        self.handshake_timer: asyncio.TimerHandle | None = None

    # tracing switches a connection's tracer (trace/tracer.py)
    @property
    def tracer(self) -> MessageTracer | None:
        return self.core.tracer

    @tracer.setter
    def tracer(self, tracer: MessageTracer | None) -> None:
        self.core.tracer = tracer

    @property
    def partner_pending(self) -> bool:
        return self.core.partner_pending

    @partner_pending.setter
    def partner_pending(self, value: bool) -> None:
        self.core.partner_pending = value

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # closed while connecting
            transport.close()
            return
        self.attach(transport)
        self.relay.register_tls(self)
        core = self.core
        core.start(self.ctx.clock())
        self._arm_handshake_timer()
        if not self.server_side or core.close_request is not None:
            self._after([])

    def _arm_handshake_timer(self) -> None:
        due = self.core.next_deadline()
        if due is not None and self.core.session.state != OPEN:
            delay = max(due - self.ctx.clock(), 0.001)
            self.handshake_timer = self.relay.loop.call_later(delay, self._handshake_timer)

    def _handshake_timer(self) -> None:
        self.handshake_timer = None
        if self.closed:
            return
        self.core.handle_timer(self.ctx.clock())
        self._after([])
        if not self.closed and self.core.session.state != OPEN:
            self._arm_handshake_timer()  # the loop's clock ran a little ahead of ours

    def data_received(self, data: bytes) -> None:
        # relay_seconds times one read in four: the others do not read the clock
        hist = self.ctx.stats.relay_seconds
        hist.tick += 1
        started = 0.0 if hist.tick & 3 else time.perf_counter()
        core = self.core
        out = core.receive(data, self.ctx.clock())
        if core.events or core.close_request is not None or core.session.urgent or core.wire:
            self._after(out, started)
            return
        # the hot path: whole records of SIP, nothing else to do
        if out:
            self._deliver(out, core.batch_msgs, started)

    def _after(self, out: list[bytes], started: float = 0.0) -> None:
        """Act on the core: the handshake's end, bytes due, the batch read, a close."""
        core = self.core
        if core.events:
            core.pop_events()
            if self.handshake_timer is not None:
                self.handshake_timer.cancel()
                self.handshake_timer = None
            self.on_ready()
            if self.partner is not None:
                self.partner.update_reading()
        wire = core.data_to_send()
        if wire and self.live:
            self.transport.write(wire)
        if out:
            self._deliver(out, core.batch_msgs, started)
        req = core.close_request
        if req is not None and not self.closed:
            self.close(*req)

    def after_core(self) -> None:
        self._after([])

    def connection_lost(self, exc: Exception | None) -> None:
        self.live = False
        if not self.closed:
            self.core.connection_lost(str(exc) if exc else None, self.ctx.clock())
            self._after([])
        self.relay.unregister(self)

    # -- Partner interface (called by the other leg) -----------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        """Encrypt and write messages towards this leg's TLS peer."""
        if self.closed:
            return
        core = self.core
        wire = core.send(chunks, nmsgs, self.ctx.clock())
        if wire:
            self.transport.write(wire)
        elif core.session.state != OPEN and self.partner is not None:
            self.partner.update_reading()  # queued for our handshake: maybe too much

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        if self.core.partner_closed(reason, detail):
            self.close(reason, detail)

    # -- delivering ------------------------------------------------------------------------------

    def _deliver(self, out: list[bytes], nmsgs: int, started: float = 0.0) -> None:
        core = self.core
        partner = self.partner
        if partner is not None and not core.pending:
            partner.send(out, nmsgs)
            if started:
                self.ctx.stats.relay_seconds.observe(time.perf_counter() - started)
        else:
            core.hold(out, nmsgs)
            self.update_reading()

    def flush_pending(self) -> None:
        """Hand queued messages to the partner once it is ready."""
        if not self.core.pending or self.partner is None:
            return
        chunks, nmsgs = self.core.take_pending()
        self.partner.send(chunks, nmsgs)
        self.update_reading()

    def backlog_in(self) -> bool:
        return self.core.backlog_in()

    def backlog_out(self) -> bool:
        return self.core.backlog_out()

    # -- hooks for the roles -------------------------------------------------------------------

    #: stats direction labels, set by the roles
    relay_direction_in = "from_client"
    relay_direction_out = "to_client"

    def on_ready(self) -> None:
        """The handshake completed: start relaying."""

    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        """The certificate this side presented (and its server domain)."""
        return None, None

    def backend_addresses(self) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """(local, remote) of the plain backend connection, when this leg has one."""
        return None

    # -- closing -------------------------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str = "", abort: bool = False) -> None:
        """End this connection: send close_notify, flush, close (or abort, when the peer does
        not read); then end the partner."""
        if self.closed:
            return
        self.closed = True
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        core = self.core
        core.close(reason, detail, flush=self.live and not abort)
        wire = core.data_to_send()
        if wire and self.live and not abort:
            self.transport.write(wire)
        self.shut_transport(reason, abort)
        self.relay.connection_closed(self.conn)
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner_closed(self._reason_for_partner(reason), detail)
        self.on_closed(reason)

    def _reason_for_partner(self, reason: CloseReason) -> CloseReason:
        """What the other leg reports when this one ends."""
        if self.server_side:
            return reason
        # a backend or peer we connected to went away, or could not be reached over TLS
        if reason is CloseReason.HANDSHAKE_FAILED:
            return CloseReason.BACKEND_UNREACHABLE
        if reason in (CloseReason.EOF, CloseReason.READ_ERROR):
            return CloseReason.BACKEND_GONE
        return reason

    def on_closed(self, reason: CloseReason) -> None:
        """Role-specific clean-up."""
