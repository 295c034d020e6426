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
#: how the client's SIP arrives: TLS, WebSocket over TLS, WebSocket
Transport = Literal["tls", "wss", "ws"]


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
    WS_REFUSED = "WebSocket refused"
    SHUTDOWN = "Shutdown"

    @property
    def label(self) -> str:
        """Short form for metric labels."""
        return self.name.lower()


_STARTUP = int(time.time()) & 0xFFFFFF
_RANDOM = random.SystemRandom().getrandbits(8)
_counter = 0
#: in a worker process: the worker's index and generation, in the top 8 bits of the id's low
#: 32 (the counter then has 24); None: one process, the counter has all 32
_WORKER: int | None = None
_COUNTER_MASK = 0xFFFFFFFF

#: a connection id's low 32 bits in a worker process: index (6 bits, `MAX_WORKERS` = 64),
#: generation (2 bits), counter (24 bits)
_WORKER_SHIFT = 26
_GENERATION_SHIFT = 24


def set_worker(index: int, generation: int) -> None:
    """In a worker process (`workers` > 1): the id's low 32 bits start with the worker's index
    (which names the worker that owns it) and its generation (the slot's starts, modulo 4: a
    replacement started in the same second as its predecessor gives other ids); the random
    byte and the start time stay, so ids of pods started in the same second differ too."""
    global _WORKER, _COUNTER_MASK
    _WORKER = ((index & 0x3F) << _WORKER_SHIFT) | ((generation & 0x3) << _GENERATION_SHIFT)
    _COUNTER_MASK = (1 << _GENERATION_SHIFT) - 1


def worker_of(conn_id: int) -> int:
    """The index of the worker that owns a connection id (see `set_worker`)."""
    return (conn_id >> _WORKER_SHIFT) & 0x3F


def new_connection_id() -> int:
    """A 64-bit id laid out as OpenSIPS's connection `cid`: random byte, start time, counter
    (in a worker process the counter's top byte is the worker's: `set_worker`)."""
    global _counter
    _counter = (_counter + 1) & _COUNTER_MASK
    if _WORKER is None:
        return (_RANDOM << 56) | (_STARTUP << 32) | _counter
    return (_RANDOM << 56) | (_STARTUP << 32) | _WORKER | _counter


@dataclass(slots=True, eq=False)
class Connection:
    """One TLS or WebSocket connection: accepted from a client (inbound) or opened to a peer
    (outbound)."""

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
    #: NSS key-log lines, filled during the handshake when keys are enabled (None: none)
    keylog: list[str] | None = None
    transport: Transport = "tls"
    #: WebSocket connections: what the Upgrade request said (request target, Origin,
    #: User-Agent)
    ws_path: str | None = None
    ws_origin: str | None = None
    user_agent: str | None = None

    @property
    def peer_cert(self) -> CertInfo | None:
        if self.peer_cert_der is None:
            return None
        from tlstrace.tls.certinfo import from_der

        return from_der(self.peer_cert_der)
