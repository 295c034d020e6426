"""SIP messages for tests, and a blocking TLS client with control over TLS record boundaries."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterable

from tlstrace.sip.framing import KeepAlive, Message, SipFramer


def request(
    method: str = "OPTIONS",
    call_id: str = "test@tlstrace",
    cseq: int = 1,
    body: bytes = b"",
    *,
    uri: str = "sip:bob@example.com",
    headers: Iterable[str] = (),
    compact: bool = False,
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-{call_id}-{cseq}",
        "Max-Forwards: 70",
        f"From: <sip:alice@example.com>;tag=a-{cseq}",
        "To: <sip:bob@example.com>",
        f"{'i' if compact else 'Call-ID'}: {call_id}",
        f"CSeq: {cseq} {method}",
        *headers,
        f"{'l' if compact else 'Content-Length'}: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response_to(req: bytes, code: int = 200, reason: str = "OK", body: bytes = b"") -> bytes:
    head = req.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [
        h
        for h in head[1:]
        if h.split(b":", 1)[0].strip().lower()
        in (b"via", b"from", b"to", b"call-id", b"i", b"cseq")
    ]
    lines = [f"SIP/2.0 {code} {reason}".encode(), *keep, f"Content-Length: {len(body)}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def client_context(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
    check_hostname: bool = False,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key)
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


class TlsClient:
    """A blocking TLS client. Each `send()` call becomes one TLS record (up to 16 KiB)."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        ctx: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.ctx = ctx or client_context()
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = self.ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
        self.framer = SipFramer(max_msg_size=1 << 24, pingpong=False, max_chunks=None)
        self.received: list[bytes] = []
        self.keepalives: list[bytes] = []

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_records(self, pieces: Iterable[bytes], pause: float = 0.0) -> None:
        """Send each piece as its own TLS record."""
        for piece in pieces:
            self.sock.sendall(piece)
            if pause:
                time.sleep(pause)

    def _pump(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        if not data:
            return False
        for ev in self.framer.feed(data):
            if isinstance(ev, Message):
                self.received.append(ev.data)
            elif isinstance(ev, KeepAlive):
                self.keepalives.append(ev.data)
        return True

    def recv_messages(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until `n` messages in total have arrived; return (and consume) them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            if not self._pump(deadline):
                break
        if len(self.received) < n:
            raise AssertionError(f"got {len(self.received)} of {n} messages")
        out, self.received = self.received[:n], self.received[n:]
        return out

    def recv_keepalive(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.keepalives and time.monotonic() < deadline:
            if not self._pump(deadline):
                break
        if not self.keepalives:
            raise AssertionError("no keep-alive bytes arrived")
        return self.keepalives.pop(0)

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True when the relay closes the connection within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._pump(deadline):
                    return True
            except (ssl.SSLError, OSError):
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def close_notify(self) -> None:
        """Close the TLS session properly (close_notify both ways), then the socket.

        A plain close() with unread data (even TLS 1.3 session tickets) makes the kernel send
        a RST, which throws away what the relay had not read yet."""
        try:
            self.sock.settimeout(10)
            self.sock.unwrap().close()
        except (OSError, ValueError):
            self.close()

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
