"""tcp: listeners: take SIP from the local SIP server and relay it over TLS to a peer.

Outbound TLS connections are pooled per destination (peer host and port; with
`cert_check_on_conn_reusage`, also per client domain), so several local TCP connections share
one TLS connection and it outlives them until its idle lifetime.

A SIP server opens several connections to the same address (one per worker), so what the peer
sends is routed (`tlstrace.sip.route`, learnt from what the local connections sent):

- a response goes to the local connection that sent its request (by transaction), or else
  to the local connection of its dialog;
- a request goes where the request it belongs to went (a retransmission, a CANCEL or ACK of
  an INVITE), or else to the local connection of its dialog;
- anything else: a request goes to `local_target` (a TCP connection tlstrace opens to the
  local SIP server and keeps), or, without `local_target`, to the local connection that sent
  last; a response goes to the local connection that sent last only without `local_target`.
  What has nowhere to go is dropped, counted (`tlstrace_messages_dropped_total`) and logged
  at most once per 10 s per reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Protocol

from tlstrace.config import Endpoint, Listener
from tlstrace.relay.client_tls import ClientTls
from tlstrace.relay.connection import CloseReason
from tlstrace.relay.host import RelayHost
from tlstrace.relay.leg import protocol_factory
from tlstrace.relay.listening import Listening, bind_listening
from tlstrace.relay.plain_leg import PlainLeg
from tlstrace.sip.framing import WHITESPACE
from tlstrace.sip.route import Peek, Route, TrunkRoutes
from tlstrace.tls.failures import HandshakeFailure

log = logging.getLogger("tlstrace.relay")

PoolKey = tuple[str, int, str | None]
#: seconds between sweeps of expired transactions and dialogs
_EXPIRY_INTERVAL = 5.0
#: a drop reason is logged at most this often (seconds); the lines in between are counted
_DROP_LOG_INTERVAL = 10.0
#: seconds after a failed connection to local_target before the next attempt
_TARGET_RETRY = 1.0


class PoolHost(RelayHost, Protocol):
    """The relay, with its pool of peer connections."""

    pool: PeerPool


class OutboundListener:
    def __init__(self, relay: PoolHost, listener: Listener) -> None:
        self.relay = relay
        self.listener = listener
        self.server: asyncio.Server | None = None
        self.listening: Listening | None = None

    async def start(self) -> None:
        ep = self.listener.listen
        sock = bind_listening(
            ep.host, ep.port, backlog=1024, reuse_port=self.relay.config.reuse_port
        )
        self.listening = Listening(self.relay.loop, protocol_factory(self._accept), sock, 1024)
        self.server = await self.listening.start()

    def _accept(self) -> PlainLeg:
        link = self.relay.pool.link_for(self.listener)
        local = PlainLeg(self.relay, None, name="local")
        local.partner = LocalEnd(link, local)
        return local

    def close(self) -> None:
        if self.listening is not None:
            self.listening.close()


class PeerPool:
    def __init__(self, relay: RelayHost) -> None:
        self.relay = relay
        self.links: dict[PoolKey, PeerLink] = {}

    def link_for(self, listener: Listener) -> PeerLink:
        peer = listener.peer
        assert peer is not None
        domain = listener.client_domain or "default"
        key: PoolKey = (
            peer.host,
            peer.port,
            domain if self.relay.config.cert_check_on_conn_reusage else None,
        )
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = PeerLink(self.relay, peer, domain, str(listener.listen))
            # the listeners sharing this peer agree on it (the configuration checks that)
            link.local_target = next(
                (
                    li.local_target
                    for li in self.relay.config.listener
                    if li.peer == peer and li.local_target is not None
                ),
                None,
            )
        return link


class PeerLink:
    """One destination: its pooled TLS connection and the local connections using it.

    It is the partner of the pooled TLS leg: what the peer sends arrives in `send`.
    """

    def __init__(self, relay: RelayHost, peer: Endpoint, domain: str, listener: str) -> None:
        self.relay = relay
        self.peer = peer
        self.domain = domain
        self.listener = listener
        self.tls: PeerTls | None = None
        #: attached local connections, the most recent sender last (without local_target,
        #: what the peer sends that belongs to no known connection goes to it)
        self.locals: OrderedDict[PlainLeg, None] = OrderedDict()
        cfg = relay.config
        self.routes: TrunkRoutes[PlainLeg] = TrunkRoutes(
            max_transactions=cfg.trunk_max_transactions,
            max_dialogs=cfg.trunk_max_dialogs,
            max_bytes=cfg.trunk_max_table_bytes,
            dialog_idle=cfg.trunk_dialog_idle,
        )
        self.expiry: asyncio.TimerHandle | None = None
        #: where requests from the peer go that belong to no known local connection
        self.local_target: Endpoint | None = None
        #: tlstrace's own connection to local_target, while it is open (or opening)
        self.target: TargetLeg | None = None
        self.target_failed_at = -1e9
        #: by drop reason: when it was last logged, and drops since then
        self.drops_logged: dict[str, tuple[float, int]] = {}

    @property
    def latest(self) -> PlainLeg | None:
        return next(reversed(self.locals), None)

    # -- from the local side -------------------------------------------------------------------

    def to_peer(self, local: PlainLeg, chunks: list[bytes], nmsgs: int) -> None:
        if self.latest is not local and local in self.locals:
            self.locals.move_to_end(local)
            self._tls_update()
        if nmsgs:
            now = self.relay.loop.time()
            learn = self.routes.from_local
            for chunk in chunks:
                if chunk[0] not in WHITESPACE:
                    learn(local, chunk, now)
            if self.expiry is None:
                self.expiry = self.relay.loop.call_later(_EXPIRY_INTERVAL, self._expire)
        tls = self.tls
        if tls is None or tls.closed:
            tls = self._open()
        tls.send(chunks, nmsgs)

    def attach(self, local: PlainLeg) -> None:
        # a new connection has sent nothing yet: it goes first, the most recent sender stays last
        self.locals[local] = None
        self.locals.move_to_end(local, last=False)

    def detach(self, local: PlainLeg) -> None:
        self.routes.forget(local)
        if local is self.target:
            self.target = None
        if self.locals.pop(local, False) is None:
            self._tls_update()

    def _expire(self) -> None:
        self.expiry = None
        self.routes.expire(self.relay.loop.time())
        if any(self.routes.tables):
            self.expiry = self.relay.loop.call_later(_EXPIRY_INTERVAL, self._expire)

    def _tls_update(self) -> None:
        if self.tls is not None and not self.tls.closed:
            self.tls.update_reading()

    def _locals_update(self) -> None:
        for local in list(self.locals):
            local.update_reading()

    def _open(self) -> PeerTls:
        relay = self.relay
        leg = PeerTls.open(relay, self.peer, self.domain, self.listener)
        leg.partner = self
        self.tls = leg
        relay.spawn(self._connect(leg))
        return leg

    async def _connect(self, leg: PeerTls) -> None:
        relay = self.relay
        try:
            await asyncio.wait_for(
                relay.loop.create_connection(
                    protocol_factory(lambda: leg), self.peer.host, self.peer.port
                ),
                relay.config.tls_handshake_timeout / 1000,
            )
        except Exception as e:  # any failure ends this attempt, never the relay
            why = str(e) or type(e).__name__
            log.warning("peer %s unreachable: %s", self.peer, why)
            relay.upstream_result(str(self.peer), "peer", False, why)
            relay.stats.dropped_messages["peer_unreachable"] += leg.core.drop_outq()
            relay.stats.handshake_failed(
                leg.conn.listener, "outbound", HandshakeFailure.CONNECT_FAILED.value
            )
            relay.ctx.observer.handshake_failed(leg.conn, HandshakeFailure.CONNECT_FAILED, why)
            # counts the close, sends CLOSED when traced, and lets this link reconnect later
            # (also when the timeout came after the TCP connection was made)
            leg.close(CloseReason.CONNECT_FAILED, why, abort=True)
            return
        relay.upstream_result(str(self.peer), "peer", True)

    # -- Partner interface for the pooled TLS leg ----------------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        if not nmsgs:  # keep-alives only: to the most recent sender, if any
            latest = self.latest
            if latest is not None:
                latest.send(chunks, 0)
            return
        now = self.relay.loop.time()
        route = self.routes.to_local
        routed = self.relay.stats.trunk_routed
        out: dict[PlainLeg, tuple[list[bytes], list[int]]] = {}
        for chunk in chunks:
            dest: PlainLeg | None
            if chunk[0] in WHITESPACE:
                dest = self.latest
                if dest is not None:
                    out.setdefault(dest, ([], [0]))[0].append(chunk)
                continue
            how, dest, p = route(chunk, now)
            if dest is None:
                dest, by = self._fallback(p, chunk)
                if dest is None:
                    continue
            else:
                by = how.value
            if p is not None and p.method and how is not Route.PEER_TRANSACTION:
                self.routes.delivered(p, dest, now)
            routed[by] += 1
            batch = out.get(dest)
            if batch is None:
                batch = out[dest] = ([], [0])
            batch[0].append(chunk)
            batch[1][0] += 1
        for dest, (msgs, n) in out.items():
            dest.send(msgs, n[0])

    def _fallback(self, p: Peek | None, chunk: bytes) -> tuple[PlainLeg | None, str]:
        """Where a message from the peer goes that belongs to no known local connection."""
        is_request = p.method != b"" if p is not None else not chunk.startswith(b"SIP/")
        if self.local_target is not None:
            if not is_request:
                self._drop("unmatched_response", chunk)
                return None, ""
            target = self._target()
            if target is None:
                self._drop("local_target_unreachable", chunk)
                return None, ""
            return target, "local_target"
        latest = self.latest
        if latest is None:
            self._drop("no_local_connection", chunk)
            return None, ""
        return latest, "latest"

    def _drop(self, reason: str, chunk: bytes) -> None:
        self.relay.stats.dropped_messages[reason] += 1
        now = self.relay.loop.time()
        last, since = self.drops_logged.get(reason, (-1e9, 0))
        if now - last < _DROP_LOG_INTERVAL:
            self.drops_logged[reason] = (last, since + 1)
            return
        self.drops_logged[reason] = (now, 0)
        first = chunk[: chunk.find(b"\r\n")][:80].decode("ascii", "replace")
        log.warning(
            "peer %s: dropped a message (%s): %r%s",
            self.peer,
            reason,
            first,
            f"; {since} more dropped for this reason since the last such line" if since else "",
        )

    def _target(self) -> TargetLeg | None:
        """The connection to local_target, opened when needed (not within a second of a
        failed attempt)."""
        target = self.target
        if target is not None and not target.closed:
            return target
        now = self.relay.loop.time()
        if now - self.target_failed_at < _TARGET_RETRY:
            return None
        assert self.local_target is not None
        target = self.target = TargetLeg(self.relay)
        target.partner = LocalEnd(self, target)
        self.relay.spawn(self._connect_target(target, self.local_target))
        return target

    async def _connect_target(self, leg: TargetLeg, where: Endpoint) -> None:
        relay = self.relay
        # one series per upstream: a local_target that is also a backend stays "backend"
        role = "backend" if where in relay.config.backends else "local_target"
        try:
            await asyncio.wait_for(
                relay.loop.create_connection(protocol_factory(lambda: leg), where.host, where.port),
                relay.config.tls_handshake_timeout / 1000,
            )
        except Exception as e:  # any failure ends this attempt, never the relay
            why = str(e) or type(e).__name__
            self.target_failed_at = relay.loop.time()
            relay.upstream_result(str(where), role, False, why)
            for _ in range(leg.queued_msgs):
                self._drop("local_target_unreachable", leg.queued[0] if leg.queued else b"")
            leg.queued.clear()
            leg.queued_msgs = leg.queued_size = 0
            log.warning("peer %s: local_target %s unreachable: %s", self.peer, where, why)
            leg.close(CloseReason.BACKEND_UNREACHABLE, f"local_target {where}: {why}")
            return
        relay.upstream_result(str(where), role, True)

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        self.tls = None  # the local connections stay; the next message reconnects
        self._locals_update()

    def is_blocked(self) -> bool:
        # what the peer sends may go to any of them
        return any(local.is_blocked() for local in self.locals)

    def drained(self) -> bool:
        target = self.target
        return all(local.drained() for local in self.locals) and (
            target is None or target.drained()
        )

    def update_reading(self) -> None:
        self._locals_update()


class LocalEnd:
    """Partner of one local connection: forwards into its PeerLink."""

    def __init__(self, link: PeerLink, local: PlainLeg) -> None:
        self.link = link
        self.local = local
        link.attach(local)

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        self.link.to_peer(self.local, chunks, nmsgs)

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        self.link.detach(self.local)

    def is_blocked(self) -> bool:
        tls = self.link.tls
        return tls is not None and not tls.closed and tls.is_blocked()

    def drained(self) -> bool:
        tls = self.link.tls
        return tls is None or tls.drained()

    def update_reading(self) -> None:
        self.link._tls_update()


class TargetLeg(PlainLeg):
    """tlstrace's TCP connection to a tcp: listener's local_target; what is sent to it while
    it connects waits (bounded by conn_buffer_limit: above it the peer is not read)."""

    def __init__(self, relay: RelayHost) -> None:
        super().__init__(relay, None, name="local")
        self.queued: list[bytes] = []
        self.queued_msgs = 0
        self.queued_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.queued:
            chunks, n = self.queued, self.queued_msgs
            self.queued, self.queued_msgs, self.queued_size = [], 0, 0
            super().send(chunks, n)
            if self.partner is not None:
                self.partner.update_reading()

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        if self.live or self.closed:
            super().send(chunks, nmsgs)
            return
        self.queued.extend(chunks)
        self.queued_msgs += nmsgs
        self.queued_size += sum(map(len, chunks))
        if self.backlog_out() and self.partner is not None:
            self.partner.update_reading()

    def backlog_out(self) -> bool:
        return self.queued_size > self.relay.config.conn_buffer_limit


class PeerTls(ClientTls):
    """The pooled TLS connection to a peer."""

    relay_direction_in = "from_peer"
    relay_direction_out = "to_peer"
