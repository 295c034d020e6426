"""A SIP server for tests: TCP, in a thread with its own event loop. It records every
connection and message, answers requests with 200 OK (unless told not to), and can send
requests of its own on any connection (as a SIP server does towards a registered phone)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass, field

from tests.support.sip import response_to
from tlstrace.relay import proxy_protocol
from tlstrace.sip.framing import KeepAlive, Message, SipFramer


@dataclass(eq=False)
class BackendConn:
    transport: asyncio.Transport
    peer: tuple[str, int]
    messages: list[bytes] = field(default_factory=list)
    keepalives: list[bytes] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    proxy: tuple[tuple[str, int], tuple[str, int]] | None = None
    closed: bool = False


class _Proto(asyncio.Protocol):
    def __init__(self, backend: SipBackend) -> None:
        self.backend = backend
        self.framer = SipFramer(max_msg_size=1 << 24, pingpong=False, max_chunks=None)
        self.conn: BackendConn | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.conn = BackendConn(transport, transport.get_extra_info("peername")[:2])
        with self.backend.lock:
            self.backend.conns.append(self.conn)
        if self.backend.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.raw += data
        if self.backend.expect_proxy and conn.proxy is None:
            self.head += data
            parsed = proxy_protocol.parse(self.head)
            if parsed is None:
                return
            conn.proxy = (parsed[0], parsed[1])
            data, self.head = self.head[parsed[2] :], b""
        replies = []
        for ev in self.framer.feed(data):
            if isinstance(ev, Message):
                with self.backend.lock:
                    conn.messages.append(ev.data)
                if self.backend.answer and not ev.data.startswith((b"SIP/2.0", b"ACK ")):
                    replies.append(response_to(ev.data))
            elif isinstance(ev, KeepAlive):
                conn.keepalives.append(ev.data)
        if replies:
            conn.transport.write(b"".join(replies))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.closed = True


class SipBackend:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        answer: bool = True,
        expect_proxy: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.answer = answer
        self.expect_proxy = expect_proxy
        self.ssl_context = ssl_context
        self.paused = False
        self.conns: list[BackendConn] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.port = port
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> asyncio.Server:
            return await self.loop.create_server(
                lambda: _Proto(self), self.host, self.port, ssl=self.ssl_context
            )

        self.server = self.loop.run_until_complete(start())
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def call(self, fn: object, *args: object) -> None:
        self.loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]

    def send(self, index: int, data: bytes) -> None:
        """Write `data` on connection `index` (backend-initiated traffic)."""
        self.call(self.conns[index].transport.write, data)

    def close_conn(self, index: int) -> None:
        self.call(self.conns[index].transport.close)

    def pause_all(self) -> None:
        """Stop reading (accepted and future connections): a backend that never reads."""
        self.paused = True
        for c in list(self.conns):
            self.call(c.transport.pause_reading)

    def resume_all(self) -> None:
        """Read again, after `pause_all`."""
        self.paused = False
        for c in list(self.conns):
            self.call(c.transport.resume_reading)

    def wait_conns(self, n: int, timeout: float = 10.0) -> list[BackendConn]:
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"backend saw {len(self.conns)} of {n} connections")
            time.sleep(0.01)
        return self.conns

    def wait_messages(self, n: int, index: int = 0, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        self.wait_conns(index + 1, timeout)
        conn = self.conns[index]
        while len(conn.messages) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"backend conn {index} got {len(conn.messages)} of {n}")
            time.sleep(0.01)
        return conn.messages

    def wait_closed(self, index: int = 0, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.conns[index].closed and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.conns[index].closed

    def stop(self) -> None:
        def _stop() -> None:
            self.server.close()
            for c in self.conns:
                c.transport.abort()
            # abort() closes the sockets in callbacks of the next iteration: let them run
            self.loop.call_soon(self.loop.stop)

        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(_stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> SipBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
