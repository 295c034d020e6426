"""Faults around a running relay: the backend down at start, dying mid-dialog, or accepting and
never reading; HEP collectors down, slow, or accepting TCP and never reading; a certificate
replaced by garbage and reloaded; the key-log file on a full or read-only filesystem.

For each: what the relay does is defined, logged and counted, and SIP traffic carries on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import (
    LegitTraffic,
    Metrics,
    RawTlsClient,
    StallingServer,
    burst,
    fd_count,
    kill_backend,
    local_port,
    rss_kib,
    wait_closed,
    wait_fds,
    wait_metric,
    wait_open_inbound,
)
from tests.support import relay as relay_module
from tests.support.backend import SipBackend
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, client_context, request
from tests.test_tls_server import peer_cn

Legit = Callable[..., LegitTraffic]
Factory = Callable[..., RelayProcess]


def counted_exactly(relay: RelayProcess, before: Metrics, requests: int) -> Metrics:
    after = Metrics.scrape(relay)
    assert after.delta(before, "tlstrace_sip_messages_total", direction="from_client") == requests
    assert after.delta(before, "tlstrace_sip_messages_total", direction="to_client") == requests
    return after


# -- the backend -----------------------------------------------------------------------------


def test_backend_down_at_start(relay_factory: Factory, legit: Legit, record: Record) -> None:
    """Each client that arrives while the backend is down is closed (its request counted as
    dropped); once the backend is up, traffic flows without a restart."""
    port = free_port()
    backend_ep = f"tcp:127.0.0.1:{port}"
    relay = relay_factory(
        {"listener": [{"listen": f"tls:127.0.0.1:{free_port()}", "backend": backend_ep}]}
    )
    ready = httpx.get(f"{relay.api_url}/readyz", timeout=10)
    assert (
        ready.status_code == 503
        and "unreachable" in ready.json()["checks"][f"backend {backend_ep}"]
    )
    before = Metrics.scrape(relay)
    n = 5
    ports = []
    for i in range(n):
        # the request goes in the same segment as the client's Finished, so the relay has
        # read it before the backend connection fails
        c = RawTlsClient(relay.port(), send_last_flight=False)
        ports.append(local_port(c.sock))
        c.sock.sendall(c.record(request(call_id=f"early{i}@x")))
        assert wait_closed(c.sock)[0] in ("eof", "reset")
        c.close()
    after = Metrics.scrape(relay)
    log = relay.wait_log(f"backend {backend_ep} unreachable")
    for p in ports:
        assert f" inbound 127.0.0.1:{p} closed: Backend unreachable ({backend_ep}: " in log
    assert after.delta(before, "tlstrace_backend_connect_failures_total") == n
    assert (
        after.delta(before, "tlstrace_connections_closed_total", reason="backend_unreachable") == n
    )
    # each request the relay read is dropped and counted (none can be relayed)
    dropped = after.delta(before, "tlstrace_messages_dropped_total", reason="backend_unreachable")
    assert dropped == n
    assert after.delta(before, "tlstrace_sip_messages_total", direction="from_client") == n
    assert after.get("tlstrace_upstream_up", upstream=backend_ep) == 0

    with SipBackend(port=port) as backend:
        before = Metrics.scrape(relay)
        traffic = legit(relay.port())
        result = traffic.check(backend)
        counted_exactly(relay, before, result.sent)
        assert Metrics.scrape(relay).get("tlstrace_upstream_up", upstream=backend_ep) == 1
        assert httpx.get(f"{relay.api_url}/readyz", timeout=10).status_code == 200
    record(
        offenders=n,
        closed=n,
        reason="backend_unreachable",
        dropped=dropped,
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


def test_backend_dies_mid_dialog(relay_factory: Factory, legit: Legit, record: Record) -> None:
    """The backend goes away with dialogs open: each client connection is closed (close_notify)
    and counted as backend_gone; a backend back on the same port serves new connections."""
    port = free_port()
    backend = SipBackend(port=port)
    relay = relay_factory({"listener": [RelayProcess.tls_listener(port)]})
    n = 5
    clients = [TlsClient(relay.port()) for _ in range(n)]
    ports = [c.local_port for c in clients]
    try:
        for i, c in enumerate(clients):
            c.send(request("INVITE", f"dialog{i}@x", body=b"v=0\r\n"))
            assert c.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
        before = Metrics.scrape(relay)
        kill_backend(backend)
        for c in clients:
            assert c.wait_closed()
    finally:
        for c in clients:
            c.close()
    wait_open_inbound(relay, 0)
    after = Metrics.scrape(relay)
    assert after.delta(before, "tlstrace_connections_closed_total", reason="backend_gone") == n
    assert after.delta(before, "tlstrace_messages_dropped_total") == 0
    log = relay.log
    for client_port in ports:
        assert (
            f" inbound 127.0.0.1:{client_port} closed: Backend gone (backend closed the connection"
        ) in log

    with SipBackend(port=port) as again:
        before = Metrics.scrape(relay)
        traffic = legit(relay.port())
        result = traffic.check(again)
        counted_exactly(relay, before, result.sent)
    assert relay.proc.poll() is None
    record(
        dialogs=n,
        closed=n,
        reason="backend_gone",
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


@pytest.fixture
def two_backends(
    relay_factory: Factory,
) -> Iterator[tuple[RelayProcess, SipBackend, StallingServer]]:
    """A relay with two listeners: one in front of a good backend, one in front of a backend
    that accepts and never reads."""
    with SipBackend() as good, StallingServer() as stuck:
        relay = relay_factory(
            {
                "conn_buffer_limit": 65536,
                "tls_send_timeout": 1500,
                "listener": [
                    RelayProcess.tls_listener(good.port),
                    RelayProcess.tls_listener(stuck.port),
                ],
            }
        )
        yield relay, good, stuck


def push_until_blocked(port: int, limit_bytes: int, seconds: float) -> tuple[int, bool]:
    """Write 60 kB messages as fast as the relay takes them; (bytes written, closed)."""
    client = TlsClient(port, timeout=2)
    big = request("MESSAGE", "big@x", body=b"b" * 60000)
    written = 0
    deadline = time.monotonic() + seconds
    try:
        while written < limit_bytes and time.monotonic() < deadline:
            client.send(big)
            written += len(big)
    except (TimeoutError, OSError, ssl.SSLError):
        pass  # the relay stopped reading us (buffers full) or closed us
    closed = client.wait_closed(timeout=15)
    client.close()
    return written, closed


def test_backend_that_never_reads_is_bounded(
    two_backends: Any, legit: Legit, record: Record
) -> None:
    """Backpressure: the relay stops reading the client once about conn_buffer_limit is
    waiting for the backend; after tls_send_timeout it aborts the backend connection (what it
    held is counted as dropped bytes) and closes the client; the other listener's clients see
    nothing of it, and no socket stays behind."""
    relay, good, _ = two_backends
    pid = relay.proc.pid
    at_rest = fd_count(pid)
    before = Metrics.scrape(relay)
    rss_before = rss_kib(pid)
    traffic = legit(relay.port(0))
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        written, closed = push_until_blocked(relay.port(1), 200 * 1024 * 1024, 20)
    finally:
        stop.set()
        sampler.join(5)
    result = traffic.check(good)
    assert closed
    # the client could hand over a few MB (socket buffers on both sides, conn_buffer_limit),
    # not the 200 MB it tried; the relay's memory grew by less than that
    assert written < 32 * 1024 * 1024
    growth_kib = peak[0] - rss_before
    assert growth_kib < 64 * 1024
    log = relay.wait_log("closed: Send timeout (backend left data unread for over 1500 ms)")
    assert "Traceback" not in log
    wait_open_inbound(relay, 0)
    assert wait_fds(pid, at_rest) <= at_rest  # the stuck backend's socket too
    after = Metrics.scrape(relay)
    assert after.delta(before, "tlstrace_connections_closed_total", reason="send_timeout") == 1
    dropped = after.delta(before, "tlstrace_bytes_dropped_total", reason="send_timeout")
    assert dropped > 0
    assert (
        after.delta(before, "tlstrace_sip_messages_total", direction="from_client", kind="OPTIONS")
        == result.sent
    )
    record(
        offender_bytes_written=written,
        relay_rss_growth_kib=growth_kib,
        closed=1,
        reason="send_timeout",
        bytes_dropped=dropped,
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


def test_slow_reading_client_gets_every_message(
    relay_factory: Factory, backend: SipBackend
) -> None:
    """A legitimate client that reads slower than its backend sends (6 MB, read at 100 kB/s
    for a while): backpressure pauses the backend, and the partial-message clock stops while
    the relay itself is not reading, so nothing is closed and every message arrives."""
    relay = relay_factory(
        {"tcp_max_msg_time": 1.0, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.connect(("127.0.0.1", relay.port()))
    sock = client_context().wrap_socket(raw)
    try:
        sock.sendall(request("SUBSCRIBE", "slow-reader@x"))
        backend.wait_messages(1)
        n = 400  # 6 MB: more than the kernel buffers between the relay and the client
        for i in range(n):
            backend.send(0, request("NOTIFY", f"slow-reader-{i}@x", body=b"n" * 15000))
        got = bytearray()
        started = time.monotonic()
        deadline = started + 60
        sock.settimeout(20)
        time.sleep(0.8)  # busy for a moment: the buffers fill up
        while got.count(b"NOTIFY sip:") < n and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            got += data
            if time.monotonic() - started < 4:
                time.sleep(len(data) / 100_000)  # then about 100 kB/s for a few seconds
        assert got.count(b"NOTIFY sip:") == n
    finally:
        sock.close()


# -- HEP collectors ----------------------------------------------------------------------------


class Collector:
    """A HEP destination in some state of failure, and what the log says about it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.server: StallingServer | None = None
        if kind == "udp-down":
            port = free_port(kind=socket.SOCK_DGRAM)
            self.hep_id = f"[down]127.0.0.1:{port};transport=udp"
            self.log = f"HEP down refused (127.0.0.1:{port})"
        elif kind == "tcp-down":
            port = free_port()
            self.hep_id = f"[down]127.0.0.1:{port};transport=tcp"
            self.log = f"HEP down connect failed (127.0.0.1:{port})"
        else:
            self.server = StallingServer(read_rate=20_000 if kind == "tcp-slow" else 0)
            name = kind.removeprefix("tcp-")
            self.hep_id = f"[{name}]127.0.0.1:{self.server.port};transport=tcp"
            self.log = f"HEP {name} connected to 127.0.0.1:{self.server.port} over tcp"
        self.name = self.hep_id[1 : self.hep_id.index("]")]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(params=["udp-down", "tcp-down", "tcp-slow", "tcp-never-reads"])
def collector(request: pytest.FixtureRequest) -> Iterator[Collector]:
    c = Collector(request.param)
    yield c
    c.close()


def traced_relay(relay_factory: Factory, backend: SipBackend, collector: Collector) -> RelayProcess:
    return relay_factory(
        {
            "hep_id": [collector.hep_id],
            "trace_on": True,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


def burst_until_dropped(relay: RelayProcess, name: str, tag: str) -> tuple[int, Metrics]:
    """Traced traffic until the collector's sender drops packets; the requests it took."""
    sent = 0
    for round_ in range(12):
        sent += burst(relay.port(), 1000, f"{tag}-{round_}", body=b"p" * 1000)
        m = Metrics.scrape(relay)
        if m.get("tlstrace_hep_packets_dropped_total", destination=name) > 0:
            return sent, m
    raise AssertionError(f"no HEP packet dropped after {sent} requests")


def test_hep_collector_failure(
    relay_factory: Factory, backend: SipBackend, legit: Legit, collector: Collector, record: Record
) -> None:
    relay = traced_relay(relay_factory, backend, collector)
    before = Metrics.scrape(relay)
    traffic = legit(relay.port())
    bursts, _m = burst_until_dropped(relay, collector.name, f"burst-{traffic.tag}")
    result = traffic.check(backend)
    after = counted_exactly(relay, before, result.sent + bursts)
    relay.wait_log(collector.log)
    log = relay.wait_log(f"WARNING hep.sender: HEP {collector.name} dropping packets: ")
    assert log.count(f"HEP {collector.name} dropping packets: ") <= 2  # rate-limited
    dropped = after.get("tlstrace_hep_packets_dropped_total", destination=collector.name)
    built = after.delta(before, "tlstrace_trace_packets_total")
    assert dropped > 0 and built >= 2 * (result.sent + bursts)
    assert relay.proc.poll() is None and "Traceback" not in relay.log
    record(
        collector=collector.kind,
        hep_packets_built=built,
        hep_dropped=dropped,
        burst_requests=bursts,
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


# -- certificates ------------------------------------------------------------------------------


def test_certificate_replaced_by_garbage_then_reloaded(
    relay_factory: Factory,
    backend: SipBackend,
    pki: Pki,
    tmp_path: Path,
    legit: Legit,
    record: Record,
) -> None:
    first, second = pki.leaf("first.hardening"), pki.leaf("second.hardening")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    relay = relay_factory(
        {
            "server_domain": [
                {"name": "default", "certificate": str(cert), "private_key": str(key)}
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    api = httpx.Client(base_url=relay.api_url, timeout=10)
    before = Metrics.scrape(relay)

    def served_certificate() -> list[tuple[str, float]]:
        m = Metrics.scrape(relay)
        return [
            (dict(labels)["subject"], value)
            for (name, labels), value in m.samples.items()
            if name == "tlstrace_certificate_not_after_timestamp_seconds"
            and ("role", "server") in labels
        ]

    served = served_certificate()
    assert len(served) == 1 and served[0][0].endswith("CN=first.hardening")
    traffic = legit(relay.port())

    failures = 0
    for target, garbage in [
        (cert, "not a certificate\n"),
        (cert, first.cert.read_text()[:200]),
        (key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        (key, second.key.read_text()),
    ]:  # a key that does not match
        target.write_text(garbage)
        r = api.post("/api/reload")
        assert r.status_code == 409 and r.json()["reloaded"] is False
        assert "server_domain[0]" in r.json()["message"]
        relay.signal(signal.SIGHUP)
        failures += 2
        relay.wait_log("reload failed, keeping the current configuration and certificates")
        with TlsClient(relay.port()) as c:  # new connections: still the old certificate
            assert peer_cn(c) == "first.hardening"
            c.close_notify()
        traffic.wait_progress()
        shutil.copy(first.cert, cert)
        shutil.copy(first.key, key)
    assert relay.log.count("reload failed, keeping the current configuration") == failures
    m = Metrics.scrape(relay)
    assert m.delta(before, "tlstrace_reloads_total", result="failure") == failures
    assert m.delta(before, "tlstrace_reloads_total", result="success") == 0
    assert served_certificate() == served

    shutil.copy(second.cert, cert)
    shutil.copy(second.key, key)
    r = api.post("/api/reload")
    assert r.status_code == 200 and r.json()["reloaded"] is True
    with TlsClient(relay.port()) as c:
        assert peer_cn(c) == "second.hardening"
        c.close_notify()
    assert served_certificate()[0][0].endswith("CN=second.hardening")
    m = Metrics.scrape(relay)
    assert m.delta(before, "tlstrace_reloads_total", result="success") == 1
    result = traffic.check(backend)  # the open connections never noticed
    log = relay.log
    assert "BEGIN PRIVATE KEY" not in log and "AAAA" not in log
    record(
        failed_reloads=failures,
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


# -- the key-log file --------------------------------------------------------------------------


def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


def relay_in_mount_namespace(setup: str) -> list[str]:
    """The command that starts tlstrace in its own mount namespace after `setup` (shell)."""
    return [
        "unshare",
        "-rm",
        "--",
        "sh",
        "-c",
        f'{setup} && exec "$0" -m tlstrace "$@"',
        sys.executable,
    ]


def client_keys(path: Path) -> list[str]:
    """The secrets in a client's key-log file (the hex after the client random)."""
    if not path.exists():
        return []
    return [
        line.split()[2]
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]


@pytest.mark.skipif(not namespaces_work(), reason="needs unshare -rm and tmpfs mounts")
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_keylog_file_on_a_broken_disk(
    relay_factory: Factory,
    backend: SipBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    legit: Legit,
    record: Record,
    disk: str,
) -> None:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if disk == "full":
        setup = (
            f"mount -t tmpfs -o size=64k tmpfs {mnt} && "
            f"{{ dd if=/dev/zero of={mnt}/fill bs=4k >/dev/null 2>&1 || true; }}"
        )
        expected = f"cannot write to key-log file {mnt}/keys.log: No space left on device"
    else:
        # read-only from after start-up: one that is read-only already stops the start
        # (keylog_file: not writable, checked by tlstrace/preflight.py)
        setup = f"mount -t tmpfs tmpfs {mnt} && {{ (sleep 1; mount -o remount,ro {mnt}) & }}"
        expected = f"cannot open key-log file {mnt}/keys.log: Read-only file system"
    monkeypatch.setattr(relay_module, "TLSTRACE", relay_in_mount_namespace(setup))
    relay = relay_factory(
        {
            "keylog_file": str(mnt / "keys.log"),
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    if disk == "read-only":
        mounts = Path(f"/proc/{relay.proc.pid}/mounts")
        deadline = time.monotonic() + 15
        while not any(
            line.split()[1] == str(mnt) and "ro" in line.split()[3].split(",")
            for line in mounts.read_text().splitlines()
        ):
            assert time.monotonic() < deadline, mounts.read_text()
            time.sleep(0.05)
    before = Metrics.scrape(relay)
    ctx = client_context()
    ctx.keylog_filename = str(tmp_path / "client-keys.log")
    traffic = legit(relay.port(), ctx=ctx)
    wait_metric(relay, "tlstrace_keylog_file_errors_total", 1)
    result = traffic.check(backend)
    after = counted_exactly(relay, before, result.sent)
    errors = after.get("tlstrace_keylog_file_errors_total")
    assert errors >= 1
    log = relay.wait_log(expected)
    assert " ERROR tlstrace.trace: " + expected in log
    assert log.count(expected) == 1  # once per retry period, not once per handshake
    secrets = client_keys(tmp_path / "client-keys.log")
    assert secrets
    assert not any(s in log for s in secrets)
    record(
        disk=disk,
        keylog_errors=errors,
        error_lines=log.count(expected),
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_keylog_file_that_is_a_device_keeps_its_mode(
    relay_factory: Factory, backend: SipBackend, tmp_path: Path
) -> None:
    """keylog_file naming a device (here a private copy of /dev/null): the relay never
    chmods it (as root it would break /dev/null for every other user)."""
    device = tmp_path / "null"  # a private copy of /dev/null, so nothing shared is touched
    try:
        os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))
    except OSError as e:
        pytest.skip(f"cannot mknod: {e}")
    os.chmod(device, 0o666)
    relay = relay_factory(
        {"keylog_file": str(device), "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    with TlsClient(relay.port()) as c:
        c.send(request())
        c.recv_messages(1)
        c.close_notify()
    time.sleep(0.5)
    assert device.stat().st_mode & 0o777 == 0o666
