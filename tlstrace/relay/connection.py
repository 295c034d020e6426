"""What tlstrace knows about one TLS connection, shared by the relay, tracing, metrics and API."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tlstrace.tls.certinfo import CertInfo

Direction = Literal["inbound", "outbound"]


class CloseReason(StrEnum):
    """Why a connection ended. Values are OpenSIPS's CLOSED texts where it has one."""

    EOF = "EOF received"
    READ_ERROR = "Read error"
    WRITE_ERROR = "Write error"
    IDLE_TIMEOUT = "Timeout on no traffic"
    MESSAGE_TIMEOUT = "Timeout waiting for a complete message"
    FRAMING_ERROR = "Framing error"
    SEND_TIMEOUT = "Send timeout"
    BACKEND_GONE = "Backend gone"
    BACKEND_UNREACHABLE = "Backend unreachable"
    HANDSHAKE_FAILED = "Handshake failed"
    CONNECT_FAILED = "Async connect failed"
    CLOSED_BY_API = "Closed by API"
    NON_SIP_RECORDS = "Too many TLS records without SIP"
    KEEPALIVE_FLOOD = "Keep-alive rate exceeded"
    SHUTDOWN = "Shutdown"

    @property
    def label(self) -> str:
        """Short form for metric labels."""
        return self.name.lower()


_STARTUP = int(time.time()) & 0xFFFFFF
_RANDOM = random.SystemRandom().getrandbits(8)
_counter = 0


def set_worker(index: int) -> None:
    """In a worker process (`workers` > 1): the id's top byte is the worker's index instead of
    a random byte, so ids are unique across the workers and name the worker that owns them."""
    global _RANDOM
    _RANDOM = index & 0xFF


def worker_of(conn_id: int) -> int:
    """The index of the worker that owns a connection id (see `set_worker`)."""
    return (conn_id >> 56) & 0xFF


def new_connection_id() -> int:
    """A 64-bit id laid out as OpenSIPS's connection `cid`: random byte, start time, counter."""
    global _counter
    _counter = (_counter + 1) & 0xFFFFFFFF
    return (_RANDOM << 56) | (_STARTUP << 32) | _counter


@dataclass(slots=True, eq=False)
class Connection:
    """One TLS connection: accepted from a client (inbound) or opened to a peer (outbound)."""

    direction: Direction
    remote: tuple[str, int]
    local: tuple[str, int]
    listener: str
    id: int = field(default_factory=new_connection_id)
    started: float = field(default_factory=time.time)
    state: Literal["handshake", "open", "closed"] = "handshake"
    sni: str | None = None
    #: the server domain (by name) whose context the handshake ran on
    server_domain: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    resumed: bool = False
    handshake_ms: float | None = None
    peer_cert_der: bytes | None = None
    local_cert: CertInfo | None = None
    client_random: bytes | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    msgs_in: int = 0
    msgs_out: int = 0
    traced: bool = False
    #: until when (epoch seconds) the SIP server keeps a registration made over this
    #: connection, which holds it open past tcp_connection_lifetime
    registered_until: float | None = None
    close_reason: CloseReason | None = None
    #: NSS key-log lines, filled during the handshake when keys are enabled
    keylog: list[str] = field(default_factory=list)

    @property
    def peer_cert(self) -> CertInfo | None:
        if self.peer_cert_der is None:
            return None
        from tlstrace.tls.certinfo import from_der

        return from_der(self.peer_cert_der)
