"""The server side of SIP over WebSocket (RFC 7118), sans-IO, on wsproto (the sans-IO
WebSocket library of the h11 family): bytes in, SIP messages and bytes to send out.

    framer = WsFramer(max_msg_size=65535, max_upgrade_size=8192, origins=None)
    n = framer.feed_into(data, out)   # complete SIP messages appended to `out`, stream-framed
    transport.write(framer.data_to_send())  # 101 or the refusal, pongs, close frames
    framer.upgraded / framer.request      # the Upgrade was accepted; what it said
    framer.refusal                        # (WsRefusal, detail): the connection must end
    framer.peer_closed                    # (code, reason): the client's close handshake
    wire = framer.frame(chunks)           # messages for the client, one text frame each

Rules:
- The Upgrade (HTTP/1.1 GET, RFC 6455 §4.2) must name the `sip` subprotocol, which is echoed;
  wsproto checks Host, Connection, Upgrade, Sec-WebSocket-Key and -Version. An `Origin`
  allow-list applies when one is configured. A request larger than `max_upgrade_size` is
  refused (431). No extension is accepted: permessage-deflate is never negotiated.
- wsproto enforces the framing: client frames masked, control frames unfragmented and at most
  125 bytes, valid opcodes, no RSV bits, UTF-8 text, the close handshake. A message larger
  than `max_msg_size` is refused with close code 1009 as soon as its size passes the limit.
- Each WebSocket message (text or binary) is one SIP message; tlstrace/ws/stream.py adds a
  Content-Length when it is missing and refuses (1008) a length that disagrees with the
  message. A message of whitespace only is a keep-alive: `\\r\\n\\r\\n` (a CRLF ping, as SIP.js
  sends) is answered with a `\\r\\n` text frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason as WsClose
from wsproto.utilities import RemoteProtocolError

from tlstrace.sip.framing import WHITESPACE, FramingError
from tlstrace.ws.stream import StreamForm

SUBPROTOCOL: Final = "sip"
_HEAD16: Final = struct.Struct("!BBH")
_HEAD64: Final = struct.Struct("!BBQ")
PONG_TEXT: Final = "\r\n"
_PING: Final = b"\r\n\r\n"


class WsRefusal(StrEnum):
    """Why a WebSocket connection was refused (metric label)."""

    BAD_REQUEST = "bad_request"  # not a valid WebSocket Upgrade (HTTP 400 or 426)
    NO_SIP_SUBPROTOCOL = "no_sip_subprotocol"  # HTTP 400
    ORIGIN = "origin"  # not in ws_origins: HTTP 403
    HOST = "host"  # a Host no HTTP server would take: HTTP 400
    UPGRADE_TOO_LARGE = "upgrade_too_large"  # HTTP 431
    UPGRADE_TIMEOUT = "upgrade_timeout"  # no complete request within ws_upgrade_timeout
    UNMASKED_FRAME = "unmasked_frame"  # close 1002
    FRAGMENTED_CONTROL = "fragmented_control"  # close 1002
    PROTOCOL_ERROR = "protocol_error"  # any other framing rule: close 1002
    INVALID_UTF8 = "invalid_utf8"  # close 1007
    MESSAGE_TOO_LARGE = "message_too_large"  # close 1009
    NOT_SIP = "not_sip"  # a message a stream cannot carry as it is: close 1008


@dataclass(slots=True, frozen=True)
class UpgradeRequest:
    """What the client's Upgrade request said."""

    path: str
    host: str
    origin: str | None
    user_agent: str | None
    #: the subprotocol token as the client wrote it (echoed)
    subprotocol: str


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _good_host(host: str) -> bool:
    """A Host an HTTP server would take: printable, no blanks, no path or user part."""
    return 0 < len(host) <= 300 and host.isprintable() and not any(c in host for c in " \t/\\@")


def _refusal_of(message: str) -> WsRefusal:
    """A wsproto ParseFailed message as a refusal reason."""
    if "unmasked" in message:
        return WsRefusal.UNMASKED_FRAME
    if "fragment control" in message:
        return WsRefusal.FRAGMENTED_CONTROL
    return WsRefusal.PROTOCOL_ERROR


class WsFramer:
    """One client's WebSocket connection, server side. Satisfies relay/core.Framer."""

    def __init__(
        self,
        *,
        max_msg_size: int = 65535,
        max_upgrade_size: int = 8192,
        origins: frozenset[str] | None = None,
    ) -> None:
        self.max_msg_size = max_msg_size
        self.max_upgrade_size = max_upgrade_size
        #: allowed Origin values (lower case); None: any
        self.origins = origins
        self.ws = WSConnection(ConnectionType.SERVER)
        self.stream = StreamForm(max_msg_size)
        self.upgraded = False
        self.request: UpgradeRequest | None = None
        #: set when the connection must end: (reason, detail); the refusal (an HTTP status
        #: or a close frame) is in data_to_send()
        self.refusal: tuple[WsRefusal, str] | None = None
        #: the client's close frame (code, reason); the answer is in data_to_send()
        self.peer_closed: tuple[int, str] | None = None
        # relay/core.Framer's counters: CRLF pings (answered), keep-alives relayed (never:
        # they are answered or dropped here) and dropped; `error` stays None (see `refusal`)
        self.pings = 0
        self.relayed = 0
        self.dropped = 0
        self.error: FramingError | None = None
        #: WebSocket ping frames answered
        self.ws_pings = 0
        self._out: list[bytes] = []
        self._upgrade_bytes = 0
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete Upgrade request or message held back."""
        return self._size if self.upgraded else self._upgrade_bytes

    @property
    def open(self) -> bool:
        return self.upgraded and self.ws.state is ConnectionState.OPEN

    # -- input -----------------------------------------------------------------------------------

    def feed_into(self, data: bytes, out: list[bytes]) -> int:
        """Bytes from the client: append each complete SIP message to `out`; return how many
        (-1 once the connection is refused or closed: see `refusal`, `peer_closed`)."""
        if self.refusal is not None or self.peer_closed is not None:
            return -1
        if not self.upgraded:
            return self._feed_upgrade(data, out)
        ws = self.ws
        try:
            ws.receive_data(data)
        except RemoteProtocolError as e:  # data after the close handshake
            self._refuse(WsRefusal.PROTOCOL_ERROR, str(e), WsClose.PROTOCOL_ERROR)
            return -1
        return self._events(ws.events(), out)

    def _feed_upgrade(self, data: bytes, out: list[bytes]) -> int:
        self._upgrade_bytes += len(data)
        ws = self.ws
        try:
            ws.receive_data(data)
            events = list(ws.events())
        except RemoteProtocolError as e:
            hint = e.event_hint
            self._reject(
                WsRefusal.BAD_REQUEST,
                str(e),
                hint if isinstance(hint, RejectConnection) else RejectConnection(status_code=400),
            )
            return -1
        request = next((ev for ev in events if isinstance(ev, Request)), None)
        if request is None:
            if self._upgrade_bytes > self.max_upgrade_size:
                self._reject(
                    WsRefusal.UPGRADE_TOO_LARGE,
                    f"no complete Upgrade request in {self.max_upgrade_size} bytes",
                    RejectConnection(status_code=431),
                )
                return -1
            return 0
        # what came after the request (a client should wait for the 101; tolerated)
        h11 = getattr(ws.handshake, "_h11_connection", None)
        trailing = bytes(h11.trailing_data[0]) if h11 is not None else b""
        size = self._upgrade_bytes - len(trailing)
        if size > self.max_upgrade_size:
            self._reject(
                WsRefusal.UPGRADE_TOO_LARGE,
                f"Upgrade request of {size} bytes (ws_max_upgrade_size {self.max_upgrade_size})",
                RejectConnection(status_code=431),
            )
            return -1
        if not self._accept(request):
            return -1
        self._upgrade_bytes = 0
        if not trailing:
            return 0
        return self.feed_into(trailing, out)

    def _accept(self, request: Request) -> bool:
        headers = list(request.extra_headers)
        origin = _header(headers, b"origin")
        sip = next((p for p in request.subprotocols if p.lower() == SUBPROTOCOL), None)
        if sip is None:
            offered = ", ".join(request.subprotocols) or "none"
            self._reject(
                WsRefusal.NO_SIP_SUBPROTOCOL,
                f"Sec-WebSocket-Protocol does not offer sip (offered: {offered[:80]})",
                RejectConnection(status_code=400),
            )
            return False
        host = request.host
        if not _good_host(host):
            bad = RejectConnection(status_code=400)
            self._reject(WsRefusal.HOST, f"Host {host[:80]!r} is not a host", bad)
            return False
        if self.origins is not None and (origin is None or origin.lower() not in self.origins):
            self._reject(
                WsRefusal.ORIGIN,
                f"Origin {origin[:120] if origin else None!r} is not in ws_origins",
                RejectConnection(status_code=403),
            )
            return False
        self.request = UpgradeRequest(
            request.target, host, origin, _header(headers, b"user-agent"), sip
        )
        # no extensions: permessage-deflate is never negotiated (nothing to bound)
        self._out.append(self.ws.send(AcceptConnection(subprotocol=sip)))
        self.upgraded = True
        return True

    def _events(self, events: Iterable[Event], out: list[bytes]) -> int:
        n = 0
        ws = self.ws
        for ev in events:
            if isinstance(ev, Message):
                data = ev.data
                part = data.encode() if isinstance(ev, TextMessage) else bytes(data)
                self._size += len(part)
                if self._size > self.max_msg_size:
                    self._refuse(
                        WsRefusal.MESSAGE_TOO_LARGE,
                        f"message over max_msg_size {self.max_msg_size} bytes",
                        WsClose.MESSAGE_TOO_BIG,
                    )
                    return -1
                if not ev.message_finished:
                    self._parts.append(part)
                    continue
                if self._parts:
                    self._parts.append(part)
                    part = b"".join(self._parts)
                    self._parts = []
                self._size = 0
                if not self._message(part, out):
                    return -1
                n += 1
            elif isinstance(ev, Ping):
                self.ws_pings += 1
                self._out.append(ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self.peer_closed = (ev.code, ev.reason or "")
                    self._out.append(ws.send(ev.response()))
                    return -1
                # wsproto refused a frame (the event carries the code to close with)
                code = int(ev.code)
                reason = ev.reason or ""
                kind = (
                    WsRefusal.INVALID_UTF8
                    if code == WsClose.INVALID_FRAME_PAYLOAD_DATA
                    else _refusal_of(reason)
                )
                self._refuse(kind, reason, code)
                return -1
            # Pong: nothing to do
        return n

    def _message(self, data: bytes, out: list[bytes]) -> bool:
        if not data or (data[0] in WHITESPACE and not data.strip(b"\r\n \t")):
            if _PING in data:
                self.pings += 1
                self._out.append(self.ws.send(TextMessage(data=PONG_TEXT)))
            else:
                self.dropped += 1
            return True
        framed = self.stream.convert(data)
        if isinstance(framed, FramingError):
            self._refuse(
                WsRefusal.NOT_SIP,
                f"{framed.kind.value}: {framed.detail}",
                WsClose.POLICY_VIOLATION,
            )
            return False
        out.append(framed)
        return True

    # -- refusals --------------------------------------------------------------------------------

    def _reject(self, kind: WsRefusal, detail: str, event: RejectConnection) -> None:
        """Refuse the Upgrade with an HTTP status."""
        self.refusal = (kind, f"HTTP {event.status_code}: {detail}")
        try:
            self._out.append(self.ws.send(event))
        except Exception:  # h11 may refuse to answer a request it could not read
            self._out.append(
                b"HTTP/1.1 %d Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                % event.status_code
            )

    def _refuse(self, kind: WsRefusal, detail: str, code: int) -> None:
        """End an open WebSocket connection with a close frame."""
        self.refusal = (kind, f"close {code}: {detail}")
        self.close(code, kind.value)

    # -- output ----------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes due to the client (the handshake answer, pongs, close frames)."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def frame(self, chunks: list[bytes]) -> bytes:
        """Messages for the client, one frame each: text, or binary for a message that is not
        UTF-8 (RFC 7118 allows both); keep-alives (whitespace) are not sent. A server's frame
        is a 2-10 byte header and the payload as it is (no mask, no extension): built here,
        which costs a fifth of wsproto's way; wsproto still decides whether the connection
        may send."""
        if self.ws.state is not ConnectionState.OPEN:
            return b""
        frames: list[bytes] = []
        for chunk in chunks:
            if chunk[0] in WHITESPACE:
                continue
            try:
                chunk.decode()
                opcode = 0x81  # FIN, text
            except UnicodeDecodeError:
                opcode = 0x82  # FIN, binary
            n = len(chunk)
            if n < 126:
                frames.append(bytes((opcode, n)) + chunk)
            elif n < 65536:
                frames.append(_HEAD16.pack(opcode, 126, n) + chunk)
            else:
                frames.append(_HEAD64.pack(opcode, 127, n) + chunk)
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def close(self, code: int = WsClose.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start (or answer) the close handshake, if the connection is open."""
        ws = self.ws
        if self.upgraded and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._out.append(ws.send(CloseConnection(code=code, reason=reason or None)))
