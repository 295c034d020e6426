"""What every hardening test uses: the relay's /metrics as numbers, legitimate traffic that
runs alongside an attack and checks every answer, raw TLS bytes (real and hand-crafted
ClientHellos, records sent byte by byte), and facts about the relay process (fds, RSS).

Every wait here is bounded; nothing asserts how long something took.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.backend import SipBackend
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

# -- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """One scrape of /metrics: sample name and labels -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def scrape(cls, relay: RelayProcess, token: str | None = None) -> Metrics:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = httpx.get(f"{relay.api_url}/metrics", headers=headers, timeout=10)
        r.raise_for_status()
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                samples[s.name, frozenset(s.labels.items())] = s.value
        return cls(samples)

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}

    def delta(self, before: Metrics, name: str, **labels: str) -> float:
        return self.get(name, **labels) - before.get(name, **labels)


def wait_metric(
    relay: RelayProcess,
    name: str,
    at_least: float,
    timeout: float = 15.0,
    token: str | None = None,
    **labels: str,
) -> Metrics:
    """Scrape until `name{labels}` reaches `at_least`; return that scrape."""
    deadline = time.monotonic() + timeout
    while True:
        m = Metrics.scrape(relay, token)
        if m.get(name, **labels) >= at_least:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{name}{labels} = {m.get(name, **labels)}, expected at least {at_least}"
            )
        time.sleep(0.1)


def wait_open_inbound(relay: RelayProcess, expected: int, timeout: float = 15.0) -> None:
    """Wait until the relay reports exactly `expected` open inbound TLS connections."""
    deadline = time.monotonic() + timeout
    while True:
        n = Metrics.scrape(relay).get("tlstrace_connections_open", direction="inbound")
        if n == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} inbound connections open, expected {expected}")
        time.sleep(0.1)


# -- the relay process -------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_fds(pid: int, at_most: int, timeout: float = 15.0) -> int:
    """Wait until the process has at most `at_most` open fds; return the count."""
    deadline = time.monotonic() + timeout
    while True:
        n = fd_count(pid)
        if n <= at_most or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def log_count(relay: RelayProcess, text: str) -> int:
    return relay.log.count(text)


def wait_log_count(relay: RelayProcess, text: str, count: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = relay.log
        if log.count(text) >= count:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{log.count(text)} of {count} log lines with {text!r}")
        time.sleep(0.1)


# -- legitimate traffic ------------------------------------------------------------------------

_tags = itertools.count(1)


@dataclass
class TrafficResult:
    tag: str
    sent: int
    answered: int
    connections: int
    errors: list[str]

    @property
    def lost(self) -> int:
        return self.sent - self.answered


@dataclass
class LegitTraffic:
    """Well-behaved SIP clients running next to an attack.

    `clients` persistent TLS connections, one thread each, send a request, wait for its answer
    and check it is the 200 OK to that request (same Call-ID), then go again after `pace`
    seconds. With `newcomers`, one more thread opens a new TLS connection for every request, so
    handshakes are measured too. Every Call-ID carries the run's tag: the backend's copy of the
    traffic is found by it. Nothing is retried: a timeout, a closed connection or a wrong
    answer is an error.
    """

    port: int
    clients: int = 3
    newcomers: bool = True
    pace: float = 0.01
    timeout: float = 10.0
    ctx: ssl.SSLContext | None = None
    tag: str = field(default_factory=lambda: f"legit{next(_tags)}-{os.getpid()}")

    def __post_init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.connections = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.connected = threading.Barrier(self.clients + 1, timeout=30)

    # -- running --

    def start(self) -> LegitTraffic:
        for i in range(self.clients):
            self.threads.append(
                threading.Thread(
                    target=self._persistent, args=(i,), daemon=True, name=f"{self.tag}-p{i}"
                )
            )
        if self.newcomers:
            self.threads.append(
                threading.Thread(target=self._newcomer, daemon=True, name=f"{self.tag}-new")
            )
        for t in self.threads:
            t.start()
        # every persistent client has its connection (or an error is recorded)
        with contextlib.suppress(threading.BrokenBarrierError):
            self.connected.wait()
        self.wait_progress()
        return self

    def _error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def _exchange(self, client: TlsClient, call_id: str, cseq: int) -> bool:
        req = request("OPTIONS", call_id, cseq)
        with self.lock:
            self.sent += 1
        try:
            client.send(req)
            answer = client.recv_messages(1, timeout=self.timeout)[0]
        except (OSError, ssl.SSLError, AssertionError) as e:
            self._error(f"{call_id}: {type(e).__name__}: {e}")
            return False
        if (
            not answer.startswith(b"SIP/2.0 200 ")
            or f"Call-ID: {call_id}\r\n".encode() not in answer
        ):
            self._error(f"{call_id}: unexpected answer {answer[:80]!r}")
            return False
        with self.lock:
            self.answered += 1
        return True

    def _persistent(self, i: int) -> None:
        try:
            client = TlsClient(self.port, ctx=self.ctx, timeout=self.timeout)
        except (OSError, ssl.SSLError) as e:
            self._error(f"client {i}: cannot connect: {e!r}")
            self.connected.abort()
            return
        with self.lock:
            self.connections += 1
        with contextlib.suppress(threading.BrokenBarrierError):
            self.connected.wait()
        n = 0
        try:
            while not self.stopping.is_set():
                n += 1
                if not self._exchange(client, f"{self.tag}-p{i}-{n}", n):
                    return
                self.stopping.wait(self.pace)
        finally:
            client.close_notify()

    def _newcomer(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                client = TlsClient(self.port, ctx=self.ctx, timeout=self.timeout)
            except (OSError, ssl.SSLError) as e:
                with self.lock:
                    self.sent += 1
                self._error(f"new connection {n}: cannot connect: {e!r}")
                return
            with self.lock:
                self.connections += 1
            try:
                if not self._exchange(client, f"{self.tag}-n{n}", 1):
                    return
            finally:
                client.close_notify()
            self.stopping.wait(self.pace)

    def wait_progress(self, n: int = 5, timeout: float = 20.0) -> None:
        """Wait until `n` more requests have been answered (traffic flows right now)."""
        start = self.answered
        deadline = time.monotonic() + timeout
        while self.answered < start + n and not self.errors:
            if time.monotonic() > deadline:
                self._error(f"no progress: {self.answered - start} of {n} answers in {timeout}s")
                return
            time.sleep(0.01)

    def stop(self) -> TrafficResult:
        if not self.stopping.is_set():
            self.wait_progress()  # still flowing after the attack
            self.stopping.set()
            for t in self.threads:
                t.join(self.timeout + 15)
                if t.is_alive():
                    self._error(f"thread {t.name} did not stop")
        return TrafficResult(
            self.tag, self.sent, self.answered, self.connections, list(self.errors)
        )

    def __enter__(self) -> LegitTraffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- checking --

    def check(self, backend: SipBackend, timeout: float = 10.0) -> TrafficResult:
        """Stop; assert zero errors, every request answered, and the backend got each one
        exactly once."""
        result = self.stop()
        assert result.errors == [], result.errors
        assert result.sent > 0 and result.answered == result.sent
        marker = f"Call-ID: {self.tag}-".encode()
        deadline = time.monotonic() + timeout
        while True:
            with backend.lock:
                got = [m for c in backend.conns for m in c.messages if marker in m]
            if len(got) >= result.sent or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        ids = [m.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0] for m in got]
        assert len(ids) == len(set(ids)) == result.sent, (len(ids), len(set(ids)), result.sent)
        return result


# -- raw TCP / TLS -----------------------------------------------------------------------------


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def wait_closed(sock: socket.socket, timeout: float = 15.0) -> tuple[str, bytes]:
    """Read until the relay closes the connection: ("eof" | "reset" | "open", bytes read)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "open", bytes(got)
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return "open", bytes(got)
        except ConnectionResetError:
            return "reset", bytes(got)
        if not data:
            return "eof", bytes(got)
        got += data


def wait_all_closed(socks: list[socket.socket], timeout: float = 30.0) -> dict[str, int]:
    """Wait for the relay to close every socket; count how: eof, reset, open (still)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    outcome = {"eof": 0, "reset": 0, "open": 0}
    left = len(socks)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                how = "reset"
            else:
                if data:
                    continue
                how = "eof"
            outcome[how] += 1
            left -= 1
            sel.unregister(s)
    outcome["open"] = left
    sel.close()
    return outcome


def local_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def tls_client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def real_client_hello(
    ctx: ssl.SSLContext | None = None, server_hostname: str | None = "sip.example"
) -> bytes:
    """The ClientHello OpenSSL sends (all of it: one record)."""
    obj = (ctx or tls_client_context()).wrap_bio(
        ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_hostname
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


SSL3, TLS1_0, TLS1_1, TLS1_2 = 0x0300, 0x0301, 0x0302, 0x0303


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def crafted_client_hello(
    version: int, *, record_version: int | None = None, random: bytes | None = None
) -> bytes:
    """A ClientHello built by hand, without supported_versions: what an SSLv3, TLS 1.0, 1.1
    or 1.2 client sends. Cipher list and extensions are valid for that version."""
    if version == SSL3:
        ciphers = [0x002F, 0x0035, 0x000A, 0x00FF]  # RSA AES/3DES CBC, renegotiation SCSV
        extensions = b""
    else:
        if version == TLS1_2:
            ciphers = [
                0xC02B,
                0xC02F,
                0xC02C,
                0xC030,
                0xCCA9,
                0xCCA8,
                0xC009,
                0xC013,
                0x009C,
                0x002F,
                0x00FF,
            ]
        else:
            ciphers = [0xC009, 0xC013, 0xC00A, 0xC014, 0x002F, 0x0035, 0x000A, 0x00FF]
        groups = struct.pack("!HHH", 4, 0x001D, 0x0017)
        extensions = (
            _ext(0x000A, groups)
            + _ext(0x000B, b"\x01\x00")
            + _ext(0x0000, struct.pack("!HBH", 14, 0, 11) + b"sip.example")
        )
        if version == TLS1_2:
            algs = [0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501, 0x0201]
            extensions += _ext(
                0x000D,
                struct.pack("!H", 2 * len(algs)) + b"".join(struct.pack("!H", a) for a in algs),
            )
            extensions += _ext(0x0017, b"") + _ext(0xFF01, b"\x00")  # EMS, renegotiation_info
    body = struct.pack("!H", version) + (random or os.urandom(32)) + b"\x00"
    body += struct.pack("!H", 2 * len(ciphers)) + b"".join(struct.pack("!H", c) for c in ciphers)
    body += b"\x01\x00"  # compression: null only
    if extensions:
        body += struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    rv = record_version if record_version is not None else min(version, TLS1_0)
    return b"\x16" + struct.pack("!HH", rv, len(handshake)) + handshake


class RawTlsClient:
    """TLS over a plain socket with memory BIOs: the test decides how the bytes of each record
    reach the wire (for instance one byte at a time)."""

    def __init__(self, port: int, timeout: float = 10.0, *, send_last_flight: bool = True) -> None:
        """With `send_last_flight` False, the client's last handshake flight (its Finished)
        is held back: the first record() returns it too, so both go in one segment."""
        self.sock = connect(port, timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = tls_client_context().wrap_bio(self.incoming, self.outgoing)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                self.incoming.write(data)
        if send_last_flight:
            self.sock.sendall(self.outgoing.read())

    def record(self, data: bytes) -> bytes:
        """The bytes of `data` as one TLS record (not sent)."""
        self.obj.write(data)
        return self.outgoing.read()

    def drip(self, data: bytes, pause: float, until: float) -> bool:
        """Send `data` one byte per TCP segment, `pause` seconds apart, until it is all sent or
        `until` (monotonic) passes. False when the relay closed the connection first."""
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            if time.monotonic() > until:
                return True
            try:
                self.sock.sendall(data[i : i + 1])
            except OSError:
                return False
            if self._closed_by_peer(pause):
                return False
        return True

    def _closed_by_peer(self, wait: float) -> bool:
        """Wait up to `wait` seconds for the relay to close (reading what it sends)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            return True
        if data:
            self.incoming.write(data)
            with contextlib.suppress(ssl.SSLError):
                self.obj.read(65536)
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def many_sockets(n: int, port: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(connect(port))
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


class StallingServer:
    """A TCP server that accepts and then reads nothing (`read_rate` 0) or at most `read_rate`
    bytes a second: a backend or a HEP collector that does not keep up."""

    def __init__(self, read_rate: int = 0, rcvbuf: int = 4096) -> None:
        self.read_rate = read_rate
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.received = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                pass
            except OSError:
                return
            else:
                conn.setblocking(False)
                self.conns.append(conn)
            if self.read_rate:
                budget = max(1, self.read_rate // 5)
                for c in list(self.conns):
                    with contextlib.suppress(BlockingIOError, OSError):
                        self.received += len(c.recv(budget))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.close()
        self.sock.close()

    def __enter__(self) -> StallingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def burst(port: int, n: int, tag: str, body: bytes = b"", timeout: float = 30.0) -> int:
    """Pipeline `n` requests on one TLS connection, 100 at a time; return the answers (each
    must be a 200 to its own request)."""
    answered = 0
    with TlsClient(port, timeout=timeout) as c:
        for start in range(0, n, 100):
            ids = [f"{tag}-b{i}" for i in range(start, min(n, start + 100))]
            c.send(b"".join(request("MESSAGE", cid, 1, body) for cid in ids))
            for cid, answer in zip(ids, c.recv_messages(len(ids), timeout), strict=True):
                assert answer.startswith(b"SIP/2.0 200 ")
                assert f"Call-ID: {cid}\r\n".encode() in answer
                answered += 1
        c.close_notify()
    return answered


def kill_backend(backend: SipBackend, timeout: float = 10.0) -> None:
    """The backend dies: every connection it has is closed, then it stops listening.

    (SipBackend.stop() aborts its connections and stops its loop in the same iteration, so
    the sockets are never actually closed; closing them first makes the relay see it.)"""
    for c in list(backend.conns):
        backend.call(c.transport.abort)
    deadline = time.monotonic() + timeout
    while not all(c.closed for c in backend.conns) and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.stop()


class Target:
    """The module's relay and backend, and the relay's fd count at rest."""

    def __init__(self, relay: RelayProcess, backend: SipBackend) -> None:
        self.relay = relay
        self.backend = backend
        self.pid = relay.proc.pid
        self.fds_at_rest = fd_count(self.pid)

    def port(self) -> int:
        return self.relay.port()

    def scrape(self) -> Metrics:
        return Metrics.scrape(self.relay)

    def handshake_failed(self, port: int, reason: str) -> str:
        """The log line of one offender's failed handshake (up to its detail)."""
        return f" inbound 127.0.0.1:{port}: TLS handshake failed: {reason} ("

    def closed(self, port: int, reason: str) -> str:
        """The log line of one offender's connection closed."""
        return f" inbound 127.0.0.1:{port} closed: {reason}"

    def settle(self) -> None:
        """Nothing of the case is left open in the relay: no connection, no fd."""
        wait_open_inbound(self.relay, 0)
        assert wait_fds(self.pid, self.fds_at_rest) <= self.fds_at_rest
        assert self.relay.proc.poll() is None
        log = self.relay.log
        assert "Traceback" not in log and " ERROR " not in log
