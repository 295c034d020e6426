"""What the legs (relay/*_leg.py, inbound.py, outbound.py) need from the relay that owns them,
as Protocols: runtime.Relay implements them, and no leg imports it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from tlstrace.config import Config
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.context import RelayContext
from tlstrace.relay.hooks import MessageTracer
from tlstrace.relay.ratelimit import HandshakeGate
from tlstrace.relay.stats import RelayStats
from tlstrace.tls.contexts import ClientContexts


class LiveLeg(Protocol):
    """Any leg with a transport: swept for timeouts, closed at shutdown."""

    closed: bool

    def close(self, reason: CloseReason, detail: str = "", abort: bool = False) -> None: ...

    def check_timeouts(self, now: float) -> None: ...

    def settled(self) -> bool:
        """Nothing its ends sent is on its way: shutdown may close it without a loss."""
        ...


class TlsLegView(LiveLeg, Protocol):
    """A TLS leg as tracing and the API see it."""

    conn: Connection
    tracer: MessageTracer | None

    def backend_addresses(self) -> tuple[tuple[str, int], tuple[str, int]] | None: ...


class RelayHost(Protocol):
    """The relay as its legs see it."""

    ctx: RelayContext
    loop: asyncio.AbstractEventLoop
    client_contexts: ClientContexts
    handshake_gate: HandshakeGate | None
    inbound_open: int
    shutting_down: bool

    @property
    def config(self) -> Config: ...

    @property
    def stats(self) -> RelayStats: ...

    def register(self, leg: LiveLeg) -> None: ...

    def register_tls(self, leg: TlsLegView) -> None: ...

    def unregister(self, leg: LiveLeg) -> None: ...

    def connection_closed(self, conn: Connection) -> None: ...

    def upstream_result(self, endpoint: str, role: str, ok: bool, error: str = "") -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
