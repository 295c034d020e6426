"""The relay's shared state: configuration, contexts, live connections, counters, hooks."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tlstrace.config import Config
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.context import RelayContext
from tlstrace.relay.hooks import ConnectionObserver
from tlstrace.relay.host import LiveLeg, TlsLegView
from tlstrace.relay.outbound import PeerPool
from tlstrace.relay.ratelimit import HandshakeGate
from tlstrace.relay.stats import RelayStats
from tlstrace.tls.contexts import ClientContexts
from tlstrace.tls.keylog import KeyLogTap


@dataclass
class UpstreamStatus:
    """The last connection attempt to a backend or peer."""

    role: str  # "backend" or "peer"
    ok: bool
    at: float
    error: str = ""


class ConnectionsView(Mapping[int, Connection]):
    """The open TLS connections by id, read from their legs: no second table (one entry less
    per connection)."""

    __slots__ = ("_legs",)

    def __init__(self, legs: dict[int, TlsLegView]) -> None:
        self._legs = legs

    def __getitem__(self, conn_id: int) -> Connection:
        return self._legs[conn_id].conn

    def __iter__(self) -> Iterator[int]:
        return iter(self._legs)

    def __len__(self) -> int:
        return len(self._legs)


def listener_directions(config: Config) -> list[tuple[str, tuple[str, ...]]]:
    """Each listener's address and the directions of the TLS connections it can have: a tls:
    listener accepts (inbound) and, towards a tls: backend, connects (outbound); a tcp:
    listener connects to its peer."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for li in config.listener:
        if li.listen.scheme == "tcp":
            out.append((str(li.listen), ("outbound",)))
        elif li.backend is not None and li.backend.scheme == "tls":
            out.append((str(li.listen), ("inbound", "outbound")))
        else:
            out.append((str(li.listen), ("inbound",)))
    return out


class Relay:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        source: str,
        observer: ConnectionObserver | None = None,
        client_contexts: ClientContexts | None = None,
    ) -> None:
        self.loop = loop
        self.source = source
        #: what the connection cores see of the relay (config, clock, counters, observer)
        self.ctx = RelayContext(
            config,
            RelayStats(listener_directions(config)),
            observer=observer,
            keylog=KeyLogTap() if config.keys_wanted else None,
        )
        #: open TLS connections by id: their legs, and (a view of the same table) themselves
        self.tls_legs: dict[int, TlsLegView] = {}
        self.connections: Mapping[int, Connection] = ConnectionsView(self.tls_legs)
        #: every live leg, for the timeout sweep and shutdown (a dict used as a set: at 10,000
        #: legs its table is a third of a set's)
        self.legs: dict[LiveLeg, None] = {}
        self.inbound_open = 0
        self.handshake_gate = HandshakeGate.from_config(config, self.stats)
        self.client_contexts = client_contexts or ClientContexts(config, source)
        self.prepare_contexts(self.client_contexts.contexts())
        self.pool: PeerPool = PeerPool(self)
        self.shutting_down = False
        self.tasks: set[asyncio.Task[None]] = set()
        #: by endpoint text ("tcp:127.0.0.1:5060")
        self.upstreams: dict[str, UpstreamStatus] = {}

    @property
    def config(self) -> Config:
        return self.ctx.config

    @config.setter
    def config(self, config: Config) -> None:
        self.ctx.config = config

    @property
    def stats(self) -> RelayStats:
        return self.ctx.stats

    @property
    def observer(self) -> ConnectionObserver:
        return self.ctx.observer

    @observer.setter
    def observer(self, observer: ConnectionObserver) -> None:
        self.ctx.observer = observer

    @property
    def keylog(self) -> KeyLogTap | None:
        return self.ctx.keylog

    def upstream_result(self, endpoint: str, role: str, ok: bool, error: str = "") -> None:
        status = self.upstreams.get(endpoint)
        if ok and status is not None and status.ok:
            status.at = time.time()  # the common case: still fine
        else:
            self.upstreams[endpoint] = UpstreamStatus(role, ok, time.time(), error)

    def prepare_contexts(self, contexts: Iterable[ssl.SSLContext]) -> None:
        """Hook new contexts into key logging, when keys are enabled."""
        keylog = self.ctx.keylog
        if keylog is not None:
            for ctx in contexts:
                keylog.attach(ctx)

    def set_keys(self, wanted: bool) -> None:
        """Start or stop collecting session keys (a reload changed trace_keys or
        keylog_file). Starting hooks the contexts prepared from then on (a reload replaces
        them all); stopping leaves the hooks in place but nothing is collected any more."""
        if wanted and self.ctx.keylog is None:
            self.ctx.keylog = KeyLogTap()
        elif not wanted:
            self.ctx.keylog = None

    def replace_client_contexts(self, contexts: ClientContexts) -> None:
        """New client certificates for connections opened from now on."""
        self.prepare_contexts(contexts.contexts())
        self.client_contexts = contexts

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task and keep a reference to it until it ends."""
        task: asyncio.Task[None] = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- registry ------------------------------------------------------------------------------

    def register(self, leg: LiveLeg) -> None:
        self.legs[leg] = None

    def register_tls(self, leg: TlsLegView) -> None:
        self.legs[leg] = None
        self.tls_legs[leg.conn.id] = leg

    def unregister(self, leg: LiveLeg) -> None:
        self.legs.pop(leg, None)

    def connection_closed(self, conn: Connection) -> None:
        self.tls_legs.pop(conn.id, None)
        if conn.direction == "inbound":
            self.inbound_open -= 1

    def close_connection(self, conn_id: int, reason: CloseReason) -> bool:
        leg = self.tls_legs.get(conn_id)
        if leg is None:
            return False
        leg.close(reason)
        return True
