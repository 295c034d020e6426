"""The control seam (`tlstrace.control`) implemented by this process, over its own relay,
tracing and HEP senders: the one place that turns the process's live objects into the plain
data the API and the metrics collector see."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from hep.address import join_host_port
from hep.sender import HepSenderGroup, SenderStats
from tlstrace.config import Config, Endpoint
from tlstrace.control import (
    CertificateExpiry,
    CertificateView,
    ConnectionView,
    Counters,
    Direction,
    NoDestination,
    Readiness,
    ReloadOutcome,
    SwitchedBy,
    TraceRules,
    TraceStatus,
    TracingCounters,
    Upstream,
)
from tlstrace.feed import EventFeed
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.sweeper import probe_backend
from tlstrace.trace.filters import TraceFilter

if TYPE_CHECKING:
    from tlstrace.relay.inbound import InboundListener
    from tlstrace.relay.outbound import OutboundListener
    from tlstrace.relay.runtime import Relay
    from tlstrace.tls.certinfo import CertInfo
    from tlstrace.trace.timer import TracingTimer
    from tlstrace.trace.tracer import TraceManager


class Process(Protocol):
    """What SidecarControl reads of the process (`tlstrace.app.Sidecar`)."""

    relay: Relay
    tracing: TraceManager
    trace_timer: TracingTimer
    senders: HepSenderGroup
    feed: EventFeed
    started: float
    inbound: list[InboundListener]
    outbound: list[OutboundListener]

    @property
    def config(self) -> Config: ...

    def request_reload(self, by: SwitchedBy) -> asyncio.Future[ReloadOutcome]: ...


class SidecarControl:
    """`tlstrace.control.Control` for one process."""

    def __init__(self, process: Process) -> None:
        self.process = process

    @property
    def config(self) -> Config:
        return self.process.config

    @property
    def feed(self) -> EventFeed:
        return self.process.feed

    async def trace_state(self) -> TraceStatus:
        p = self.process
        return TraceStatus(
            enabled=p.tracing.enabled,
            destinations=tuple(p.senders.names),
            keys=p.config.trace_keys,
            filter_rules=len(p.tracing.filter.rules),
            traced_connections=sum(1 for c in p.relay.connections.values() if c.traced),
            until=p.trace_timer.until,
        )

    async def switch_tracing(
        self, on: bool, for_seconds: float | None, by: SwitchedBy
    ) -> TraceStatus:
        if on and not len(self.process.senders):
            raise NoDestination("no HEP destination is configured (hep_id)")
        self.process.trace_timer.switch(on, for_seconds, by)
        return await self.trace_state()

    async def trace_filter(self) -> TraceRules:
        f = self.process.tracing.filter
        return TraceRules(list(f.rules), f.default)

    async def set_trace_filter(self, rules: TraceRules) -> TraceRules:
        self.process.tracing.set_filter(TraceFilter(rules.rules, rules.default))
        return await self.trace_filter()

    async def connections(
        self, direction: Direction | None = None, traced: bool | None = None, limit: int = 1000
    ) -> list[ConnectionView]:
        out = []
        for conn in list(self.process.relay.connections.values()):
            if direction is not None and conn.direction != direction:
                continue
            if traced is not None and conn.traced != traced:
                continue
            out.append(_view(conn))
            if len(out) >= limit:
                break
        return out

    async def connection(self, conn_id: int) -> ConnectionView | None:
        conn = self.process.relay.connections.get(conn_id)
        return None if conn is None else _view(conn, detail=True)

    async def close_connection(self, conn_id: int) -> bool:
        return self.process.relay.close_connection(conn_id, CloseReason.CLOSED_BY_API)

    async def destinations(self) -> list[SenderStats]:
        return list(self.process.senders.stats().values())

    async def reload(self, by: SwitchedBy) -> ReloadOutcome:
        return await self.process.request_reload(by)

    async def readiness(self) -> Readiness:
        p = self.process
        checks: dict[str, str] = {}
        listeners: list[InboundListener | OutboundListener] = [*p.inbound, *p.outbound]
        for lst in listeners:
            up = lst.server is not None and lst.server.is_serving()
            checks[f"listener {lst.listener.listen}"] = "up" if up else "down"
        backends = p.config.backends
        results = await asyncio.gather(*(self._reachable(b) for b in backends))
        for backend, result in zip(backends, results, strict=True):
            checks[f"backend {backend}"] = result
        return Readiness(all(v in ("up", "reachable") for v in checks.values()), checks)

    async def _reachable(self, backend: Endpoint) -> str:
        relay = self.process.relay
        if await probe_backend(relay, backend.host, backend.port, str(backend)):
            return "reachable"
        return f"unreachable: {relay.upstreams[str(backend)].error}"

    async def counters(self) -> Counters:
        p = self.process
        relay = p.relay
        st = relay.stats
        open_ = {(name, d): 0 for name, directions in st.listeners for d in directions}
        relayed = Counter(st.bytes)
        for c in list(relay.connections.values()):
            key = (c.listener, c.direction)
            open_[key] = open_.get(key, 0) + 1
            relayed[c.listener, "from_tls"] += c.bytes_in
            relayed[c.listener, "to_tls"] += c.bytes_out
        tables = {"transactions": [0, 0], "peer_transactions": [0, 0], "dialogs": [0, 0]}
        for link in list(relay.pool.links.values()):
            for table in link.routes.tables:
                tables[table.name][0] += len(table)
                tables[table.name][1] += table.evicted
        tracing = p.tracing
        keyfile = tracing.keyfile
        return Counters(
            started=p.started,
            stats=st,
            open_connections=open_,
            bytes_relayed=dict(relayed),
            trunk_tables={name: (n, ev) for name, (n, ev) in tables.items()},
            upstreams=[Upstream(e, s.role, s.ok) for e, s in relay.upstreams.items()],
            tracing=TracingCounters(
                enabled=tracing.enabled,
                packets=tracing.packets,
                oversize=dict(tracing.oversize),
                keylog_errors=keyfile.errors if keyfile else 0,
            ),
            destinations=list(p.senders.stats().values()),
            certificates=list(self._certificates()),
        )

    def _certificates(self) -> Iterator[CertificateExpiry]:
        p = self.process
        seen: set[str] = set()
        for lst in p.inbound:
            for ident in lst.contexts.identities:
                name = ident.domain.name
                if name not in seen:
                    seen.add(name)
                    yield CertificateExpiry(
                        "server",
                        name,
                        ident.cert.subject or "none",
                        ident.cert.not_after.timestamp(),
                    )
        for domain in p.config.client_domain:
            info = p.relay.client_contexts.cert_info(domain.name)
            if info is not None:
                yield CertificateExpiry(
                    "client", domain.name, info.subject or "none", info.not_after.timestamp()
                )


def _certificate(cert: CertInfo | None) -> CertificateView | None:
    return None if cert is None else CertificateView(**cert.as_dict())


def _view(conn: Connection, detail: bool = False) -> ConnectionView:
    peer = conn.peer_cert
    return ConnectionView(
        id=conn.id,
        direction=conn.direction,
        state=conn.state,
        listener=conn.listener,
        remote=join_host_port(*conn.remote),
        local=join_host_port(*conn.local),
        sni=conn.sni,
        server_domain=conn.server_domain,
        tls_version=conn.tls_version,
        cipher=conn.cipher,
        alpn=conn.alpn,
        resumed=conn.resumed,
        handshake_ms=conn.handshake_ms,
        peer_subject=peer.subject if peer else None,
        started=conn.started,
        bytes_in=conn.bytes_in,
        bytes_out=conn.bytes_out,
        messages_in=conn.msgs_in,
        messages_out=conn.msgs_out,
        traced=conn.traced,
        registered_until=conn.registered_until,
        peer_certificate=_certificate(peer) if detail else None,
        local_certificate=_certificate(conn.local_cert) if detail else None,
        transport=conn.transport,
        ws_path=conn.ws_path,
        ws_origin=conn.ws_origin,
        user_agent=conn.user_agent,
    )
