"""Loopback HEP collectors that misbehave on purpose, for sender tests.

- `StreamCollector`: TCP or TLS (asyncio), decodes with `StreamDecoder`; can read slowly
  (`read_delay`), and can be stopped and started again on the same port.
- `deaf_tcp_listener()`: accepts TCP connections (the kernel does) and never reads.
- `FlappingCollector`: a TCP collector in its own threads (so it races the sender as a
  remote one does) that, while `flap` is set, closes each connection as soon as it accepts
  it (with a RST when `rst`), and otherwise reads and decodes like a collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from hep.codec import HepDecodeError, HepPacket, StreamDecoder


class StreamCollector:
    """A HEP-over-TCP/TLS collector on 127.0.0.1 or ::1."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        read_delay: float = 0.0,
        read_size: int = 65536,
    ) -> None:
        self.host, self.port = host, port
        self.read_delay, self.read_size = read_delay, read_size
        self.packets: list[HepPacket] = []
        self.errors: list[HepDecodeError] = []
        self.connections = 0
        self.read_errors = 0
        self._ssl: ssl.SSLContext | None = None
        if cert is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(str(cert), str(key) if key else None)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> StreamCollector:
        self._server = await asyncio.start_server(
            self._handle,
            self.host,
            self.port,
            ssl=self._ssl,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        decoder = StreamDecoder()
        try:
            while True:
                data = await reader.read(self.read_size)
                if not data:
                    break
                try:
                    self.packets += decoder.feed(data)
                except HepDecodeError as e:
                    self.errors.append(e)
                    break
                if self.read_delay:
                    await asyncio.sleep(self.read_delay)
        except (ConnectionError, ssl.SSLError):
            self.read_errors += 1
        except asyncio.CancelledError:  # stop(): end quietly
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()


@contextlib.contextmanager
def deaf_tcp_listener(host: str = "127.0.0.1", rcvbuf: int = 4096) -> Iterator[int]:
    """A port where the kernel accepts TCP connections and nobody ever reads. Yields it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((host, 0))
        s.listen(8)
        yield int(s.getsockname()[1])


class FlappingCollector:
    """HEP over TCP on 127.0.0.1, served by threads: flaps while `flap` is set."""

    def __init__(self, *, rst: bool = False) -> None:
        self.flap = True
        self.rst = rst
        self.flapped = 0
        self.connections = 0  # served normally
        self.packets: list[HepPacket] = []
        self.errors: list[HepDecodeError] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            if self.flap:
                if self.rst:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                self.flapped += 1
                continue
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = StreamDecoder()
        conn.settimeout(0.05)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    got = decoder.feed(data)
                except HepDecodeError as e:
                    self.errors.append(e)
                    return
                with self._lock:
                    self.packets += got

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self._sock.close()
