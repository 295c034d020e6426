"""A blocking SIP-over-WebSocket client for tests (wsproto's client side over a socket, TLS or
not), and hand-made frames for hostile input."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import time
from collections.abc import Sequence

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """One WebSocket frame built by hand (a client's frames are masked unless told not)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(
    host: str = "127.0.0.1",
    path: str = "/",
    *,
    protocols: Sequence[str] = ("sip",),
    origin: str | None = "https://phone.example.com",
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class WsClient:
    """SIP over WebSocket from a test: `send(msg)`, `recv()` -> one message."""

    def __init__(
        self,
        port: int,
        *,
        tls: bool = True,
        host: str = "127.0.0.1",
        path: str = "/",
        origin: str | None = "https://phone.example.com",
        protocols: Sequence[str] = ("sip",),
        user_agent: str = "tests/ws",
        context: ssl.SSLContext | None = None,
        sni: str | None = None,
        upgrade: bool = True,
        timeout: float = 10.0,
    ) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
        if tls:
            if context is None:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            raw = context.wrap_socket(raw, server_hostname=sni)
        self.sock = raw
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []
        self.messages: list[bytes] = []
        self.parts: list[bytes] = []
        self.accepted: AcceptConnection | None = None
        self.rejected: RejectConnection | None = None
        self.closed: CloseConnection | None = None
        self.eof = False
        if upgrade:
            headers = [(b"User-Agent", user_agent.encode())]
            if origin is not None:
                headers.append((b"Origin", origin.encode()))
            self.sock.sendall(
                self.ws.send(
                    Request(
                        host=host, target=path, subprotocols=list(protocols), extra_headers=headers
                    )
                )
            )
            self.wait(lambda: self.accepted is not None or self.rejected is not None)

    def send(self, message: bytes | str) -> None:
        if isinstance(message, bytes):
            self.sock.sendall(self.ws.send(BytesMessage(data=message)))
        else:
            self.sock.sendall(self.ws.send(TextMessage(data=message)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ping(self, payload: bytes = b"p") -> None:
        self.sock.sendall(self.ws.send(Ping(payload=payload)))

    def close(self, code: int = 1000) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self.sock.sendall(self.ws.send(CloseConnection(code=code)))

    def _read(self, deadline: float) -> bool:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.eof = True
            if self.ws.state is not ConnectionState.CLOSED:
                # (closed during the Upgrade: h11 calls that a bad HTTP message)
                with contextlib.suppress(RemoteProtocolError):
                    self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        for ev in self.ws.events():
            self.events.append(ev)
            if isinstance(ev, AcceptConnection):
                self.accepted = ev
            elif isinstance(ev, RejectConnection):
                self.rejected = ev
            elif isinstance(ev, RejectData):
                pass
            elif isinstance(ev, Message):
                part = ev.data.encode() if isinstance(ev, TextMessage) else bytes(ev.data)
                self.parts.append(part)
                if ev.message_finished:
                    self.messages.append(b"".join(self.parts))
                    self.parts = []
            elif isinstance(ev, CloseConnection):
                if self.closed is None:
                    self.closed = ev
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(OSError):
                        self.sock.sendall(self.ws.send(ev.response()))
            elif isinstance(ev, Pong):
                pass
        return True

    def wait(self, done: object, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            if self.eof or time.monotonic() > deadline:
                if done():  # type: ignore[operator]
                    return
                raise AssertionError(f"timed out; events so far: {self.events[-5:]}")
            self._read(deadline)

    def recv(self, timeout: float = 10.0) -> bytes:
        self.wait(lambda: self.messages, timeout)
        return self.messages.pop(0)

    def wait_closed(self, timeout: float = 10.0) -> CloseConnection | None:
        """Until the server closed (a close frame, or the end of the stream)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._read(deadline)
        return self.closed

    def read_http(self, timeout: float = 10.0) -> bytes:
        """The raw answer to a hand-sent upgrade request."""
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
        return buf

    def shut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
