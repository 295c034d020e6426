"""tls:, wss: and ws: listeners: accept TLS (or WebSocket) from SIP clients and peers, relay each
connection to the backend."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from typing import cast

from tlstrace.config import Listener
from tlstrace.logs import conn_fields
from tlstrace.relay import proxy_protocol
from tlstrace.relay.client_tls import ClientTls
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.host import RelayHost
from tlstrace.relay.leg import protocol_factory
from tlstrace.relay.listening import Listening, bind_listening
from tlstrace.relay.plain_leg import PlainLeg
from tlstrace.relay.tls_leg import TlsLeg
from tlstrace.relay.ws_core import PlainSession, WsCore
from tlstrace.tls.certinfo import CertInfo
from tlstrace.tls.contexts import ServerContexts

log = logging.getLogger("tlstrace.relay")


class InboundListener:
    def __init__(self, relay: RelayHost, listener: Listener, contexts: ServerContexts) -> None:
        self.relay = relay
        self.listener = listener
        self.contexts = contexts
        self.server: asyncio.Server | None = None
        self.listening: Listening | None = None
        self.refused_logged = 0.0
        self.backend_name = str(listener.backend)
        #: the listener's address as the counters and logs name it (once, not per connection)
        self.name = str(listener.listen)
        self.prepare(contexts)

    def prepare(self, contexts: ServerContexts) -> None:
        """Hook new contexts into key logging, when keys are enabled."""
        keylog = self.relay.ctx.keylog
        if keylog is not None:
            for ident in contexts.identities:
                keylog.attach(ident.context)

    def replace_contexts(self, contexts: ServerContexts) -> None:
        """New certificates for new connections; open ones keep theirs."""
        self.prepare(contexts)
        self.contexts = contexts

    async def start(self) -> None:
        ep = self.listener.listen
        sock = bind_listening(
            ep.host, ep.port, backlog=4096, reuse_port=self.relay.config.reuse_port
        )
        leg = InboundWs if ep.scheme in ("wss", "ws") else InboundTls
        self.listening = Listening(
            self.relay.loop, protocol_factory(lambda: leg(self.relay, self)), sock, 4096
        )
        self.server = await self.listening.start()

    def close(self) -> None:
        if self.listening is not None:
            self.listening.close()


class InboundTls(TlsLeg):
    """A client's TLS connection; its backend connection opens when the handshake completes."""

    def __init__(self, relay: RelayHost, listener: InboundListener) -> None:
        conn = Connection("inbound", ("", 0), ("", 0), listener.name)
        contexts = listener.contexts
        super().__init__(
            relay,
            conn,
            contexts.initial,
            server_side=True,
            # several domains: the ClientHello's SNI chooses the context
            chooser=None if contexts.single else contexts,
        )
        self.listener = listener
        self.contexts = contexts  # the set this connection started with, whatever reloads do
        self.refused = False
        self.connecting: asyncio.Task[None] | None = None
        self.connect_timer: asyncio.TimerHandle | None = None
        #: the backend connect's deadline passed (its task was cancelled for it)
        self.connect_expired = False
        #: closed while its backend connects, holding what it sent: it keeps its place in
        #: tcp_max_connections until the connect ends
        self.slot_kept = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        relay = self.relay
        ctx = self.ctx  # (the relay's config and stats without its Python properties)
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if peer is None or local is None:
            # reset by the client before we got to it: nothing to count, nothing to close
            self.refused = self.closed = True
            transport.abort()
            return
        if relay.inbound_open >= ctx.config.tcp_max_connections or relay.shutting_down:
            self.refused = self.closed = True
            ctx.stats.refused[self.conn.listener] += 1
            now = relay.loop.time()
            if now - self.listener.refused_logged > 10:
                self.listener.refused_logged = now
                log.warning(
                    "refusing connections on %s: tcp_max_connections (%d) reached",
                    self.conn.listener,
                    ctx.config.tcp_max_connections,
                )
            transport.abort()
            return
        gate = relay.handshake_gate
        if gate is not None and not gate.admit(peer[0], relay.loop.time(), self.conn.listener):
            self.refused = self.closed = True
            transport.abort()  # before OpenSSL sees a byte
            return
        relay.inbound_open += 1
        ctx.stats.accepted[self.conn.listener] += 1
        # (the address texts interned: one copy for every connection from one client, and
        # to one listener address; Connection stores the tuples unboxed)
        self.conn.remote = (sys.intern(peer[0]), peer[1])
        self.conn.local = (sys.intern(local[0]), local[1])
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.refused:
            super().connection_lost(exc)

    def on_ready(self) -> None:
        self.partner_pending = True
        loop = self.relay.loop
        # the leg keeps its task (asyncio only keeps weak references to tasks)
        self.connecting = loop.create_task(self._connect_backend())
        # the connect's deadline: a timer that cancels the task (asyncio.timeout costs more
        # per connection)
        self.connect_timer = loop.call_later(
            self.ctx.config.tls_handshake_timeout / 1000, self._connect_timed_out
        )

    def _connect_timed_out(self) -> None:
        self.connect_timer = None
        task = self.connecting
        if task is not None and not task.done():
            self.connect_expired = True
            task.cancel()

    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        ident = self.contexts.identity_of(context)
        if ident is None:
            return None, None
        # the domain the handshake ran on
        return ident.cert, ident.domain.name if started else None

    async def _connect_backend(self) -> None:
        try:
            await self._open_backend()
        finally:
            # a finished task would stay with the connection while it is open (with its
            # coroutine and context): ~0.5 KiB each
            self.connecting = None
            if self.slot_kept:
                self.slot_kept = False
                self.relay.inbound_open -= 1

    def on_closed(self, reason: CloseReason) -> None:
        # the client left while its backend connects: what it sent waits for the backend
        # (relayed when it is up). Until then it counts against tcp_max_connections, or clients
        # that send and leave would make the relay hold buffers beyond the limit.
        if self.connecting is not None and self.core.pending is not None:
            self.slot_kept = True
            self.relay.inbound_open += 1

    async def _open_backend(self) -> None:
        relay = self.relay
        lst = self.listener.listener
        backend = lst.backend
        assert backend is not None
        leg: PlainLeg | BackendTls
        try:
            preamble = (
                proxy_protocol.header(self.conn.remote, self.conn.local)
                if lst.proxy_protocol
                else b""
            )
            if backend.scheme == "tcp":
                leg = PlainLeg(relay, self, name="backend", preamble=preamble)
            else:
                leg = BackendTls.open(
                    relay, backend, lst.client_domain, self.conn.listener, preamble
                )
                leg.partner = self
            try:
                await relay.loop.create_connection(
                    protocol_factory(lambda: leg), backend.host, backend.port
                )
            except asyncio.CancelledError:
                if not self.connect_expired:
                    raise
                raise TimeoutError from None
            finally:
                if self.connect_timer is not None:
                    self.connect_timer.cancel()
                    self.connect_timer = None
        except Exception as e:  # any failure closes this client, never the relay
            self.partner_pending = False
            if self.closed and self.core.pending_msgs:
                relay.stats.dropped_messages[CloseReason.BACKEND_UNREACHABLE.label] += (
                    self.core.pending_msgs
                )
            relay.stats.backend_connect_failures += 1
            why = str(e) or type(e).__name__
            relay.upstream_result(self.listener.backend_name, "backend", False, why)
            log.warning(
                "conn %d: backend %s unreachable: %s",
                self.conn.id,
                backend,
                why,
                extra={**conn_fields(self.conn), "backend": str(backend)},
            )
            self.close(CloseReason.BACKEND_UNREACHABLE, f"{backend}: {why}")
            return
        relay.upstream_result(self.listener.backend_name, "backend", True)
        self.partner_pending = False
        if self.closed:
            # the client went away while we connected: what it sent before still goes to the
            # backend, then the backend connection closes (after flushing it)
            if self.core.pending:
                leg.send(*self.core.take_pending())
            leg.partner_closed(
                CloseReason.SHUTDOWN if relay.shutting_down else CloseReason.EOF,
                "the client closed first",
            )
            return
        self.partner = leg
        if self.tracer is not None:
            self.tracer.backend_leg(self.backend_addresses())
        self.flush_pending()

    def backend_addresses(self) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """(local, remote) of the plain backend connection, once it is up."""
        leg = self.partner
        if not isinstance(leg, PlainLeg) or not leg.live:
            return None
        t = leg.transport
        return t.get_extra_info("sockname")[:2], t.get_extra_info("peername")[:2]


class InboundWs(InboundTls):
    """A WebSocket client's connection (wss: TLS first; ws: none); its backend connection opens
    when the Upgrade is accepted."""

    def __init__(self, relay: RelayHost, listener: InboundListener) -> None:
        super().__init__(relay, listener)
        conn = self.conn
        scheme = listener.listener.listen.scheme
        conn.transport = "wss" if scheme == "wss" else "ws"
        session = self.core.session if scheme == "wss" else PlainSession(relay.ctx.clock())
        # (typed as the TLS core it derives from: mypyc lets no subclass narrow an attribute)
        self.core = self.leg_state = WsCore(relay.ctx, conn, session, self)


class BackendTls(ClientTls):
    """A TLS connection to a backend reached as tls:HOST:PORT."""

    relay_direction_in = "from_backend"
    relay_direction_out = "to_backend"
