"""How the relay tells tracing (and anything else) about connections and messages.

The relay calls `ConnectionObserver` once per connection event. When it decides to trace a
connection it returns a `MessageTracer`, which the relay then calls for each SIP message on
that connection; untraced connections cost one `is None` check per batch of messages.
"""

from __future__ import annotations

from typing import Protocol

from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.tls.failures import HandshakeFailure


class MessageTracer(Protocol):
    def message(self, data: bytes, received: bool, timestamp: float) -> None:
        """One SIP message: `received` from the TLS peer, or sent to it."""

    def messages(self, chunks: list[bytes], received: bool, timestamp: float) -> None:
        """A batch of framed chunks read or written together: SIP messages, and keep-alives
        (whitespace first), which are not traced."""

    def backend_leg(self, addresses: tuple[tuple[str, int], tuple[str, int]] | None) -> None:
        """The backend connection is up: (local, remote) of a plain TCP leg, or None when
        there is none to trace (a tls: backend, or no backend at all)."""


class ConnectionObserver(Protocol):
    def handshake_done(self, conn: Connection) -> MessageTracer | None: ...

    def handshake_failed(
        self, conn: Connection, reason: HandshakeFailure, message: str
    ) -> None: ...

    def closed(
        self, conn: Connection, reason: CloseReason, traced: MessageTracer | None
    ) -> None: ...


class NullObserver:
    """No tracing."""

    def handshake_done(self, conn: Connection) -> MessageTracer | None:
        return None

    def handshake_failed(self, conn: Connection, reason: HandshakeFailure, message: str) -> None:
        return None

    def closed(self, conn: Connection, reason: CloseReason, traced: MessageTracer | None) -> None:
        return None
