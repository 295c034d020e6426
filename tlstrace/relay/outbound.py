"""tcp: listeners: take SIP from the local SIP server and relay it over TLS to a peer.

Outbound TLS connections are pooled per destination (peer host and port; with
`cert_check_on_conn_reusage`, also per client domain), so several local TCP connections share
one TLS connection and it outlives them until its idle lifetime. Messages from the peer go to
the local connection that most recently sent something; with none attached they are dropped
and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from tlstrace.config import Endpoint, Listener
from tlstrace.relay.client_tls import ClientTls
from tlstrace.relay.connection import CloseReason
from tlstrace.relay.listening import Listening, bind_listening
from tlstrace.relay.plain_leg import PlainLeg
from tlstrace.tls.failures import HandshakeFailure

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay

log = logging.getLogger("tlstrace.relay")

PoolKey = tuple[str, int, str | None]


class OutboundListener:
    def __init__(self, relay: Relay, listener: Listener) -> None:
        self.relay = relay
        self.listener = listener
        self.server: asyncio.Server | None = None
        self.listening: Listening | None = None

    async def start(self) -> None:
        ep = self.listener.listen
        sock = bind_listening(ep.host, ep.port, backlog=1024,
                              reuse_port=self.relay.config.reuse_port)
        self.listening = Listening(self.relay.loop, self._accept, sock, 1024)
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
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.links: dict[PoolKey, PeerLink] = {}

    def link_for(self, listener: Listener) -> PeerLink:
        peer = listener.peer
        assert peer is not None
        domain = listener.client_domain or "default"
        key: PoolKey = (peer.host, peer.port,
                        domain if self.relay.config.cert_check_on_conn_reusage else None)
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = PeerLink(self.relay, peer, domain, str(listener.listen))
        return link


class PeerLink:
    """One destination: its pooled TLS connection and the local connections using it.

    It is the partner of the pooled TLS leg: what the peer sends arrives in `send`.
    """

    def __init__(self, relay: Relay, peer: Endpoint, domain: str, listener: str) -> None:
        self.relay = relay
        self.peer = peer
        self.domain = domain
        self.listener = listener
        self.tls: PeerTls | None = None
        #: attached local connections, the most recent sender last (what the peer sends goes
        #: to it)
        self.locals: OrderedDict[PlainLeg, None] = OrderedDict()

    @property
    def latest(self) -> PlainLeg | None:
        return next(reversed(self.locals), None)

    # -- from the local side -------------------------------------------------------------------

    def to_peer(self, local: PlainLeg, chunks: list[bytes], nmsgs: int) -> None:
        if self.latest is not local and local in self.locals:
            self.locals.move_to_end(local)
            self._tls_update()
        tls = self.tls
        if tls is None or tls.closed:
            tls = self._open()
        tls.send(chunks, nmsgs)

    def attach(self, local: PlainLeg) -> None:
        # a new connection has sent nothing yet: it goes first, the most recent sender stays last
        self.locals[local] = None
        self.locals.move_to_end(local, last=False)

    def detach(self, local: PlainLeg) -> None:
        if self.locals.pop(local, False) is None:
            self._tls_update()

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
                relay.loop.create_connection(lambda: leg, self.peer.host, self.peer.port),
                relay.config.tls_handshake_timeout / 1000)
        except Exception as e:  # any failure ends this attempt, never the relay
            why = str(e) or type(e).__name__
            log.warning("peer %s unreachable: %s", self.peer, why)
            relay.upstream_result(str(self.peer), "peer", False, why)
            relay.stats.dropped_messages["peer_unreachable"] += leg.outq_msgs
            leg.outq.clear()
            leg.outq_msgs = leg.outq_size = 0
            relay.stats.handshake_failures["outbound", HandshakeFailure.CONNECT_FAILED.value] += 1
            relay.stats.handshakes["outbound", "failure", "", ""] += 1
            relay.observer.handshake_failed(leg.conn, HandshakeFailure.CONNECT_FAILED, why)
            # counts the close, sends CLOSED when traced, and lets this link reconnect later
            # (also when the timeout came after the TCP connection was made)
            leg.close(CloseReason.CONNECT_FAILED, why, abort=True)
            return
        relay.upstream_result(str(self.peer), "peer", True)

    # -- Partner interface for the pooled TLS leg ----------------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        latest = self.latest
        if latest is None:
            if nmsgs:  # a keep-alive with nobody to give it to is not news
                self.relay.stats.dropped_messages["no_local_connection"] += nmsgs
                log.warning("peer %s sent %d message(s) but no local connection is attached",
                            self.peer, nmsgs)
            return
        latest.send(chunks, nmsgs)

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        self.tls = None  # the local connections stay; the next message reconnects
        self._locals_update()

    def is_blocked(self) -> bool:
        latest = self.latest
        return latest is not None and latest.is_blocked()

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

    def update_reading(self) -> None:
        self.link._tls_update()


class PeerTls(ClientTls):
    """The pooled TLS connection to a peer."""

    relay_direction_in = "from_peer"
    relay_direction_out = "to_peer"

