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
import socket
from typing import TYPE_CHECKING

from tlstrace.config import Endpoint, Listener
from tlstrace.relay.client_tls import ClientTls
from tlstrace.relay.connection import CloseReason
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

    async def start(self) -> None:
        ep = self.listener.listen
        self.server = await self.relay.loop.create_server(
            self._accept, ep.host, ep.port, backlog=1024, reuse_address=True,
            reuse_port=self.relay.config.reuse_port or None,
            family=socket.AF_INET6 if ":" in ep.host else socket.AF_UNSPEC,
        )

    def _accept(self) -> PlainLeg:
        link = self.relay.pool.link_for(self.listener)
        local = PlainLeg(self.relay, None, name="local")
        local.partner = LocalEnd(link, local)
        return local

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


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
        self.locals: list[PlainLeg] = []  # most recent sender last

    # -- from the local side -------------------------------------------------------------------

    def to_peer(self, local: PlainLeg, chunks: list[bytes], nmsgs: int) -> None:
        if self.locals and self.locals[-1] is not local and local in self.locals:
            self.locals.remove(local)
            self.locals.append(local)
        tls = self.tls
        if tls is None or tls.closed:
            tls = self._open()
        tls.send(chunks, nmsgs)

    def attach(self, local: PlainLeg) -> None:
        # a new connection has sent nothing yet: it goes first, the most recent sender stays last
        self.locals.insert(0, local)

    def detach(self, local: PlainLeg) -> None:
        if local in self.locals:
            self.locals.remove(local)

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
        except (OSError, TimeoutError) as e:
            why = str(e) or type(e).__name__
            log.warning("peer %s unreachable: %s", self.peer, why)
            relay.upstream_result(str(self.peer), "peer", False, why)
            dropped = leg.outq_msgs
            relay.stats.dropped_messages["peer_unreachable"] += dropped
            relay.stats.handshake_failures["outbound", HandshakeFailure.CONNECT_FAILED.value] += 1
            relay.stats.handshakes["outbound", "failure", "", ""] += 1
            relay.observer.handshake_failed(leg.conn, HandshakeFailure.CONNECT_FAILED, why)
            relay.observer.closed(leg.conn, CloseReason.CONNECT_FAILED, None)
            leg.outq.clear()
            leg.closed = True
            if self.tls is leg:
                self.tls = None
            return
        relay.upstream_result(str(self.peer), "peer", True)

    # -- Partner interface for the pooled TLS leg ----------------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        if not self.locals:
            self.relay.stats.dropped_messages["no_local_connection"] += nmsgs
            log.warning("peer %s sent %d message(s) but no local connection is attached",
                        self.peer, nmsgs)
            return
        self.locals[-1].send(chunks, nmsgs)

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        self.tls = None  # the local connections stay; the next message reconnects

    def pause_reading(self) -> None:
        for local in self.locals:
            local.pause_reading()

    def resume_reading(self) -> None:
        for local in self.locals:
            local.resume_reading()


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

    def pause_reading(self) -> None:
        if self.link.tls is not None and not self.link.tls.closed:
            self.link.tls.pause_reading()

    def resume_reading(self) -> None:
        if self.link.tls is not None and not self.link.tls.closed:
            self.link.tls.resume_reading()


class PeerTls(ClientTls):
    """The pooled TLS connection to a peer."""

    relay_direction_in = "from_peer"
    relay_direction_out = "to_peer"

    def _reason_for_partner(self, reason: CloseReason) -> CloseReason:
        return reason
