"""The control seam: all that the API (`api/`) and the Prometheus collector (`tlstrace.metrics`)
may ask of the process.

The process implements `Control` (`tlstrace.sidecar_control.SidecarControl`, over its relay,
tracing and HEP senders); the API and the collector take a `Control` and nothing else from the
process. What crosses the seam is plain data: the dataclasses below, the configuration model,
`ReloadOutcome`, the HEP senders' `SenderStats` and the relay's `RelayStats` counters. Every
call but the two properties is a coroutine, so that a supervisor of worker processes can
implement the same protocol by asking its workers over a pipe and merging their answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from hep.sender import SenderStats
from tlstrace.config import Config
from tlstrace.config.model import TraceRule
from tlstrace.feed import EventFeed
from tlstrace.relay.stats import Histogram, RelayStats
from tlstrace.reload import ReloadOutcome
from tlstrace.trace.tracer import SwitchedBy

__all__ = [
    "CertificateExpiry",
    "CertificateView",
    "ConnectionView",
    "Control",
    "Counters",
    "Direction",
    "Histogram",
    "NoDestination",
    "Readiness",
    "RelayStats",
    "ReloadOutcome",
    "SenderStats",
    "SwitchedBy",
    "TraceRules",
    "TraceStatus",
    "TracingCounters",
    "Upstream",
    "WorkerProcess",
]

Direction = Literal["inbound", "outbound"]


class NoDestination(Exception):
    """Tracing cannot be switched on: no HEP destination is configured."""


@dataclass(frozen=True, slots=True)
class CertificateView:
    subject: str
    issuer: str
    serial: str
    sha256: str
    not_after: str  # ISO 8601


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """One open TLS or WebSocket connection as the process sees it now."""

    id: int
    direction: Direction
    state: str
    listener: str
    remote: str  # HOST:PORT
    local: str
    sni: str | None
    server_domain: str | None
    tls_version: str | None
    cipher: str | None
    alpn: str | None
    resumed: bool
    handshake_ms: float | None
    peer_subject: str | None
    started: float  # time.time()
    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    traced: bool
    #: when the registration made over it expires (time.time()), if one was seen
    registered_until: float | None
    #: filled by `Control.connection` only (parsing certificates costs)
    peer_certificate: CertificateView | None = None
    local_certificate: CertificateView | None = None
    #: "tls", "wss" or "ws" (how the client's SIP arrives)
    transport: Literal["tls", "wss", "ws"] = "tls"
    #: WebSocket connections: the Upgrade's request target, Origin and User-Agent
    ws_path: str | None = None
    ws_origin: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class TraceStatus:
    enabled: bool
    destinations: tuple[str, ...]  # names of the HEP destinations
    keys: bool  # trace_keys
    filter_rules: int
    traced_connections: int
    #: when tracing switches itself off (time.time()); None: no limit
    until: float | None
    #: with worker processes: the workers that did not answer in time (their state unknown)
    not_answering: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TraceRules:
    rules: list[TraceRule]
    default: Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]  # "listener X" -> up/down, "backend Y" -> reachable/unreachable: ...


@dataclass(frozen=True, slots=True)
class Upstream:
    endpoint: str
    role: str  # backend or peer
    ok: bool  # the last connection attempt worked


@dataclass(frozen=True, slots=True)
class CertificateExpiry:
    role: Literal["server", "client"]
    domain: str
    subject: str
    not_after: float  # Unix time


@dataclass(frozen=True, slots=True)
class TracingCounters:
    enabled: bool
    packets: int
    oversize: dict[str, int]
    keylog_errors: int


@dataclass(frozen=True, slots=True)
class WorkerProcess:
    index: int
    pid: int
    cpu_seconds: float  # user + system
    resident_bytes: int


@dataclass(slots=True)
class Counters:
    """Everything `/metrics` and the status page's summary show, at one moment. In the
    process itself `stats` may be the live counters: read them before the next `await`."""

    started: float  # time.time() at start-up
    stats: RelayStats
    #: (listener, direction) -> open connections; every listener's directions present, at 0
    open_connections: dict[tuple[str, str], int]
    #: (listener, from_tls|to_tls) -> SIP bytes relayed, the open connections' included
    bytes_relayed: dict[tuple[str, str], int]
    #: trunk routing table (transactions, peer_transactions, dialogs) -> (entries, evictions)
    trunk_tables: dict[str, tuple[int, int]]
    upstreams: list[Upstream]
    tracing: TracingCounters
    destinations: list[SenderStats]
    certificates: list[CertificateExpiry]
    #: with worker processes (`workers` > 1): how many run now, and how many were restarted
    #: after dying; None: one process, no workers
    workers_running: int | None = None
    worker_restarts: int = 0
    #: with worker processes: each one's CPU and memory (the process_* families describe
    #: the supervisor alone)
    worker_processes: list[WorkerProcess] = field(default_factory=list)


class Control(Protocol):
    """What the API and the metrics collector may ask of the process."""

    @property
    def config(self) -> Config:
        """The configuration in force (after reloads)."""
        ...

    @property
    def feed(self) -> EventFeed:
        """The live feed of connection events (`GET /api/events`)."""
        ...

    async def trace_state(self) -> TraceStatus: ...

    async def switch_tracing(
        self, on: bool, for_seconds: float | None, by: SwitchedBy
    ) -> TraceStatus:
        """On (for `for_seconds`, or without a limit) or off; any limit in force is replaced.
        Raises NoDestination when switched on with no HEP destination."""
        ...

    async def trace_filter(self) -> TraceRules: ...

    async def set_trace_filter(self, rules: TraceRules) -> TraceRules:
        """Replace the rules; they decide for connections whose handshake ends from now on."""
        ...

    async def connections(
        self, direction: Direction | None = None, traced: bool | None = None, limit: int = 1000
    ) -> list[ConnectionView]:
        """Open connections (of that direction, traced or not), at most `limit`."""
        ...

    async def connection(self, conn_id: int) -> ConnectionView | None:
        """One open connection with its certificates; None when none has that id."""
        ...

    async def close_connection(self, conn_id: int) -> bool:
        """Close it as the API asked; False when no open connection has that id."""
        ...

    async def destinations(self) -> list[SenderStats]: ...

    async def reload(self, by: SwitchedBy) -> ReloadOutcome:
        """Re-read the configuration and certificates (coalesced with other requests)."""
        ...

    async def readiness(self) -> Readiness:
        """Whether every listener is up and every backend accepts TCP connections."""
        ...

    async def counters(self) -> Counters: ...
