"""`workers` > 1: a supervisor and relay worker processes behind one API and /metrics (real
processes, real TLS)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request
from tlstrace.relay.connection import worker_of

Factory = Callable[..., RelayProcess]


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def start(factory: Factory, backend: SipBackend, workers: int, **settings: Any) -> RelayProcess:
    relay = factory(
        {"workers": workers, "listener": [RelayProcess.tls_listener(backend.port)], **settings}
    )
    relay.wait_log(f"{workers} workers relaying")
    return relay


def api(relay: RelayProcess) -> httpx.Client:
    return httpx.Client(base_url=relay.api_url, timeout=30)


def open_clients(relay: RelayProcess, n: int) -> list[TlsClient]:
    """`n` TLS connections, opened from several threads at once (so that they land on
    different workers), each having relayed one request."""

    def one(i: int) -> TlsClient:
        c = TlsClient(relay.port())
        c.send(request(call_id=f"open-{i}@w"))
        c.recv_messages(1)
        return c

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def worker_pids(relay: RelayProcess) -> list[int]:
    line = relay.wait_log("workers relaying").split("(pids ", 1)[1]
    return [int(p) for p in line.split(")", 1)[0].split(", ")]


def connection_ids(http: httpx.Client) -> list[int]:
    return [int(c["id"]) for c in http.get("/api/connections").json()]


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("workers", [2, 4])
def test_one_api_traces_and_lists_every_workers_connections(
    workers: int, relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = start(relay_factory, backend, workers, hep_id=[sink.hep_id])
    http = api(relay)
    clients = open_clients(relay, 8 * workers)
    try:
        ids = connection_ids(http)
        assert len(ids) == len(clients)
        assert len(set(ids)) == len(ids)
        owners = {worker_of(i) for i in ids}
        assert owners <= set(range(workers))
        assert len(owners) >= 2, f"every connection landed on worker {owners}"

        # one switch reaches every worker before the answer
        answer = http.put("/api/trace", json={"tracing": "on"})
        assert answer.status_code == 200, answer.text
        state = http.get("/api/trace").json()
        assert state["tracing"] == "on"
        assert state["traced_connections"] == len(clients)
        for i, c in enumerate(clients):
            c.send(request(call_id=f"traced-{i}@w"))
            c.recv_messages(1)
        deadline = time.monotonic() + 15
        wanted = {f"traced-{i}@w".encode() for i in range(len(clients))}
        while True:
            seen = {w for w in wanted for p in sink.packets(1) if w in p.payload}
            if seen == wanted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert seen == wanted, f"{len(seen)} of {len(wanted)} connections traced"

        # metrics sum the workers
        text = http.get("/metrics").text
        assert metric(text, "tlstrace_connections_open") == len(clients)
        # (and the one the test harness opened to see the port listen)
        assert metric(text, "tlstrace_connections_accepted_total") >= len(clients)
        assert metric(text, "tlstrace_workers_running") == workers
        assert metric(text, "tlstrace_worker_restarts_total") == 0
        assert text.count("tlstrace_build_info{") == 1
        for i in range(workers):  # each worker's own CPU and memory
            assert metric(text, f'tlstrace_worker_cpu_seconds_total{{worker="{i}"}}') > 0
            assert metric(text, f'tlstrace_worker_resident_memory_bytes{{worker="{i}"}}') > 1e7
        assert metric(text, "tlstrace_tracing_enabled") == 1
        # two requests on each connection, each answered
        assert metric(text, "tlstrace_sip_messages_total") == 2 * 2 * len(clients)
        ready = http.get("/readyz").json()
        assert all(ready["checks"][f"worker {i}"] == "up" for i in range(workers))

        # a DELETE reaches the worker that owns the connection
        victim = ids[-1]
        assert http.delete(f"/api/connections/{victim}").status_code in (200, 204)
        deadline = time.monotonic() + 10
        while victim in connection_ids(http):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert http.get(f"/api/connections/{victim}").status_code == 404

        http.put("/api/trace", json={"tracing": "off"})
        assert http.get("/api/trace").json()["tracing"] == "off"
        assert http.get("/metrics").text.count("tlstrace_tracing_enabled 0.0") == 1
    finally:
        for c in clients:
            c.close()


def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = start(relay_factory, backend, 2, hep_id=[sink.hep_id])
    http = api(relay)
    clients = open_clients(relay, 16)
    try:
        by_worker: dict[int, list[int]] = {}
        for conn in http.get("/api/connections").json():
            by_worker.setdefault(worker_of(int(conn["id"])), []).append(int(conn["id"]))
        assert len(by_worker) == 2, by_worker
        http.put("/api/trace", json={"tracing": "on"})
        victim_pid = worker_pids(relay)[0]

        # load on the port while the worker dies
        stop = threading.Event()
        failures: list[str] = []
        done = [0]

        def load() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    with TlsClient(relay.port(), timeout=20) as c:
                        c.send(request(call_id=f"load-{n}@w"))
                        c.recv_messages(1, timeout=20)
                        done[0] += 1
                except (OSError, AssertionError) as e:
                    failures.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        os.kill(victim_pid, signal.SIGKILL)
        log = relay.wait_log("worker 0 started again", timeout=30)
        assert "worker 0 (pid" in log and "was killed by SIGKILL" in log
        assert "open connection(s) are lost" in log
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)

        # the other worker's connections go on
        alive = 0
        for i, c in enumerate(clients):
            try:
                c.send(request(call_id=f"after-{i}@w"))
                c.recv_messages(1, timeout=5)
                alive += 1
            except (OSError, AssertionError):
                pass
        assert alive == len(by_worker[1]), (alive, {k: len(v) for k, v in by_worker.items()})
        ids = connection_ids(http)
        assert set(by_worker[1]) <= set(ids)
        assert not set(by_worker[0]) & set(ids)
        # the port kept serving: new connections after the death worked (those that fell on
        # the dying worker mid-request are the only failures allowed)
        assert done[0] > 0
        assert len(failures) <= 3 * 2, failures

        text = http.get("/metrics").text
        assert metric(text, "tlstrace_worker_restarts_total") == 1
        assert metric(text, "tlstrace_workers_running") == 2
        assert http.get("/readyz").json()["checks"]["worker 0"] == "up"
        # the replacement got the tracing state
        fresh = open_clients(relay, 16)
        try:
            now = connection_ids(http)
            assert 0 in {worker_of(i) for i in now}
            assert http.get("/api/trace").json()["traced_connections"] == len(now)
        finally:
            for c in fresh:
                c.close()
    finally:
        for c in clients:
            c.close()


def test_sigterm_stops_the_supervisor_and_every_worker(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = start(relay_factory, backend, 2, shutdown_timeout=1.0)
    pids = worker_pids(relay)
    assert relay.stop(timeout=15) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = relay.log_path.read_text()
    assert "shutting down: 2 worker(s)" in log
    assert log.count("[worker ") and log.rstrip().endswith("stopped")


def test_sighup_and_the_api_reload_every_worker(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = start(relay_factory, backend, 2)
    http = api(relay)
    relay.signal(signal.SIGHUP)
    relay.wait_log("[worker 0]: reloaded:")
    relay.wait_log("[worker 1]: reloaded:")
    body = http.post("/api/reload").json()
    assert body["reloaded"] is True, body
    text = http.get("/metrics").text
    assert metric(text, 'tlstrace_reloads_total{result="success"}') == 4


def test_filters_and_events_cover_every_worker(relay_factory: Factory, backend: SipBackend) -> None:
    from tests.test_status_page import EventReader

    relay = start(relay_factory, backend, 2)
    http = api(relay)
    rules = {"rules": [{"action": "deny", "remote": "10.0.0.0/8"}], "default": "allow"}
    assert http.put("/api/trace/filters", json=rules).status_code == 200
    assert http.get("/api/trace/filters").json()["rules"][0]["remote"] == "10.0.0.0/8"
    assert http.get("/api/trace").json()["filter_rules"] == 1
    reader = EventReader(relay)
    time.sleep(1.5)  # the workers learn of the viewer at the next heartbeat
    clients = open_clients(relay, 16)
    try:
        ids = {str(i) for i in connection_ids(http)}
        owners = {worker_of(int(i)) for i in ids}
        deadline = time.monotonic() + 10
        while True:
            seen = {d["id"] for k, d in list(reader.events) if d.get("event") == "accepted"}
            if ids <= seen or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ids <= seen, (len(ids), len(seen & ids))
        assert len(owners) == 2
    finally:
        for c in clients:
            c.close()


def test_a_port_in_use_stops_the_start_with_the_usual_message(
    relay_factory: Factory, backend: SipBackend
) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        relay = relay_factory(
            {
                "workers": 2,
                "listener": [
                    {"listen": f"tls:127.0.0.1:{port}", "backend": f"tcp:127.0.0.1:{backend.port}"}
                ],
            },
            wait=False,
        )
        assert relay.proc.wait(30) == 2
        assert "cannot start:" in relay.log
        assert f"listener[0].listen: cannot listen on tls:127.0.0.1:{port}" in relay.log
    finally:
        busy.close()


# -- merging, without processes ----------------------------------------------------------------


def test_merged_counters_sum_and_keep_the_zero_series() -> None:
    from tlstrace.relay.stats import RelayStats
    from tlstrace.supervisor.merge import relay_stats

    a = RelayStats(listeners=[("tls:x:1", ("inbound",))])
    b = RelayStats(listeners=[("tls:x:1", ("inbound",))])
    a.accepted["tls:x:1"] += 2
    b.accepted["tls:x:1"] += 3
    a.messages["tls:x:1", "from_client"]["INVITE"] += 1
    b.messages["tls:x:1", "from_client"]["INVITE"] += 4
    b.messages["tls:x:1", "to_client"]["2xx"] += 1
    a.relay_seconds.observe(0.0001)
    b.relay_seconds.observe(0.5)
    b.backend_connect_failures = 7
    m = relay_stats([a, b])
    assert m.accepted["tls:x:1"] == 5
    assert m.refused["tls:x:1"] == 0 and "tls:x:1" in m.refused  # still exported at 0
    assert m.messages["tls:x:1", "from_client"]["INVITE"] == 5
    assert m.messages["tls:x:1", "to_client"]["2xx"] == 1
    assert sum(m.relay_seconds.counts) == 2
    assert m.relay_seconds.sum == pytest.approx(0.5001)
    assert m.backend_connect_failures == 7
    assert a.accepted["tls:x:1"] == 2  # the inputs are left alone
    assert m.listeners == a.listeners


def test_readiness_names_every_worker() -> None:
    from tlstrace.control import Readiness
    from tlstrace.supervisor.merge import readiness

    up = Readiness(True, {"listener tls:x:1": "up", "backend tcp:y:2": "reachable"})
    down = Readiness(False, {"listener tls:x:1": "down", "backend tcp:y:2": "reachable"})
    r = readiness({0: up, 1: up}, 2)
    assert r.ready and r.checks["worker 1"] == "up"
    r = readiness({0: up, 1: down}, 2)
    assert not r.ready and r.checks["listener tls:x:1"] == "down"
    r = readiness({0: up, 1: "restarting: pid 9 was killed by SIGKILL"}, 2)
    assert not r.ready and r.checks["worker 1"].startswith("restarting")
    assert not readiness({0: up}, 2).ready


def test_a_hung_worker_is_killed_and_replaced(relay_factory: Factory, backend: SipBackend) -> None:
    """A worker whose event loop answers nothing (SIGSTOP here) misses heartbeats: killed and
    started again; the API answers meanwhile with the other worker's view."""
    relay = start(relay_factory, backend, 2)
    http = api(relay)
    hung = worker_pids(relay)[1]
    os.kill(hung, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert http.get("/api/connections").status_code == 200  # within the call time-out
        assert time.monotonic() - t0 < 15
        relay.wait_log(f"worker 1 (pid {hung}) answered no heartbeat", timeout=40)
        relay.wait_log("worker 1 started again", timeout=40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert "was killed by SIGKILL" in relay.log
    with TlsClient(relay.port()) as c:
        c.send(request(call_id="after-hang@w"))
        c.recv_messages(1)
    assert http.get("/readyz").json()["ready"] is True


def test_workers_stop_when_the_supervisor_is_gone(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = start(relay_factory, backend, 2, shutdown_timeout=1.0)
    pids = worker_pids(relay)
    os.kill(relay.proc.pid, signal.SIGKILL)
    relay.proc.wait(10)
    deadline = time.monotonic() + 20
    for pid in pids:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # a zombie until its parent (gone) is reaped by init: look at its state
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state == "Z":
                break
            assert time.monotonic() < deadline, f"worker {pid} still runs"
            time.sleep(0.1)
    assert "the supervisor is gone: shutting down" in relay.log


def test_the_channel_answers_calls_raises_errors_and_notices_a_gone_worker() -> None:
    import asyncio
    import socket

    from tlstrace.config import ConfigError
    from tlstrace.control import NoDestination
    from tlstrace.supervisor.channel import (
        Caller,
        ChannelClosed,
        answer_calls,
        notify,
        open_channel,
    )

    async def main() -> None:
        a, b = socket.socketpair()
        notices: list[tuple[str, object]] = []
        r1, w1 = await open_channel(a)
        r2, w2 = await open_channel(b)
        caller = Caller(r1, w1, lambda kind, value: notices.append((kind, value)))

        async def add(x: int, y: int) -> int:
            await asyncio.sleep(0.01 * x)
            return x + y

        async def no_dest() -> None:
            raise NoDestination("none")

        async def bad() -> None:
            raise ConfigError("file", "key", "broken")  # does not unpickle as itself

        serving = asyncio.create_task(
            answer_calls(r2, w2, {"add": add, "no_dest": no_dest, "bad": bad})
        )
        # concurrent calls, answered out of order, each to its caller
        assert await asyncio.gather(caller.call("add", 3, 1), caller.call("add", 1, 1)) == [4, 2]
        with pytest.raises(NoDestination):
            await caller.call("no_dest")
        with pytest.raises(RuntimeError, match="ConfigError: file: key: broken"):
            await caller.call("bad")
        with pytest.raises(LookupError, match="no call named 'missing'"):
            await caller.call("missing")
        notify(w2, "ready", 42)
        await asyncio.sleep(0.05)
        assert notices == [("ready", 42)]
        pending = asyncio.create_task(caller.call("add", 100, 0))
        await asyncio.sleep(0.05)
        serving.cancel()
        w2.close()
        with pytest.raises(ChannelClosed):
            await pending
        with pytest.raises(ChannelClosed):
            await caller.call("add", 1, 2)

    asyncio.run(main())


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00\x00\x05hello", (1 << 30).to_bytes(4, "big"), b"\x00\x00\x00\x02N."],
    ids=["not a pickle", "too large", "not a frame tuple"],
)
def test_garbage_on_the_channel_is_reported_and_closes_it(garbage: bytes) -> None:
    """The supervisor's reader catches whatever a worker's bytes raise, says what (the
    supervisor then kills and replaces the worker) and fails the calls waiting."""
    import asyncio
    import socket

    from tlstrace.supervisor.channel import Caller, ChannelClosed, open_channel

    async def main() -> None:
        a, b = socket.socketpair()
        r1, w1 = await open_channel(a)
        broken: list[str] = []
        caller = Caller(r1, w1, lambda kind, value: None, broken.append)
        waiting = asyncio.create_task(caller.call("add", 1, 2, timeout=30))
        await asyncio.sleep(0.01)
        b.sendall(garbage)
        with pytest.raises(ChannelClosed):
            await waiting
        await asyncio.wait_for(caller.task, 10)
        assert len(broken) == 1 and broken[0], broken
        with pytest.raises(ChannelClosed):
            await caller.call("add", 1, 2)
        b.close()

    asyncio.run(main())


def test_the_workers_flag_and_key() -> None:
    from tlstrace.config import ConfigError, Overrides, load_config
    from tlstrace.config.load import validate
    from tlstrace.config.model import resolve_workers

    assert load_config(None, Overrides(workers="3")).workers == 3
    auto = load_config(None, Overrides(workers="auto"))
    assert auto.workers == "auto"
    assert auto.worker_count == resolve_workers("auto") == max(1, len(os.sched_getaffinity(0)))
    assert load_config(None).worker_count == 1
    for bad, why in (("0", "from 1 to 64"), ("65", "from 1 to 64"), ("two", "a number or 'auto'")):
        with pytest.raises(ConfigError, match=why) as e:
            load_config(None, Overrides(workers=bad))
        assert e.value.source == "--workers"
    with pytest.raises(ConfigError, match="workers"):
        validate({"workers": 0}, "f.toml")
    with pytest.raises(ConfigError, match="workers"):
        validate({"workers": "many"}, "f.toml")
    assert validate({"workers": "auto"}, "f.toml").workers == "auto"


def test_a_connection_view_crosses_as_a_row_and_back() -> None:
    import dataclasses

    from tlstrace.control import CertificateView, ConnectionView
    from tlstrace.supervisor.boot import row_view, view_row

    values: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(ConnectionView)):
        values[f.name] = f"v{i}" if f.name not in ("peer_certificate",) else None
    values["local_certificate"] = CertificateView("s", "i", "01", "ab", "2030-01-01")
    view = ConnectionView(**values)
    assert row_view(view_row(view)) == view


def test_merged_counters_do_not_fall_when_a_worker_is_killed(
    relay_factory: Factory, backend: SipBackend
) -> None:
    """A dead worker's last counters stay in the sums (and are not counted twice once its
    replacement answers)."""
    relay = start(relay_factory, backend, 2)
    http = api(relay)
    clients = open_clients(relay, 16)
    try:
        owners = {worker_of(i) for i in connection_ids(http)}
        assert owners == {0, 1}, owners
        before = http.get("/metrics").text
        messages = metric(before, "tlstrace_sip_messages_total")
        assert messages == 2 * len(clients)
        accepted = metric(before, "tlstrace_connections_accepted_total")
        handshakes = metric(before, "tlstrace_handshake_duration_seconds_count")
        os.kill(worker_pids(relay)[0], signal.SIGKILL)
        relay.wait_log("worker 0 started again", timeout=30)
        for _ in range(2):  # the replacement answers both times
            after = http.get("/metrics").text
            assert metric(after, "tlstrace_workers_running") == 2
            assert metric(after, "tlstrace_sip_messages_total") == messages
            assert metric(after, "tlstrace_connections_accepted_total") >= accepted
            assert metric(after, "tlstrace_handshake_duration_seconds_count") >= handshakes
            # the dead worker's connections are no longer open
            assert metric(after, "tlstrace_connections_open") < len(clients)
    finally:
        for c in clients:
            c.close()


def test_a_stuck_worker_does_not_hold_the_api_and_is_named(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    """SIGSTOP: the switch, /metrics, /readyz and the connection list answer well before the
    10 s call time-out; the switch and the tracing state name the worker that did not
    answer; readiness says it is not ready; its last counters still count."""
    relay = start(relay_factory, backend, 2, hep_id=[sink.hep_id])
    http = api(relay)
    clients = open_clients(relay, 16)
    hung = worker_pids(relay)[1]
    try:
        messages = metric(http.get("/metrics").text, "tlstrace_sip_messages_total")
        os.kill(hung, signal.SIGSTOP)
        t0 = time.monotonic()
        answer = http.put("/api/trace", json={"tracing": "on"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["workers_not_answering"] == [1]
        assert http.get("/api/trace").json()["workers_not_answering"] == [1]
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["worker 1"].startswith("not answering")
        assert metric(http.get("/metrics").text, "tlstrace_sip_messages_total") == messages
        assert http.get("/api/connections").status_code == 200
        # all of that before the heartbeat replaces the worker (3 missed, about 18 s)
        assert time.monotonic() - t0 < 15
        assert "did not answer" in relay.log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
        for c in clients:
            c.close()


def listening_inodes(port: int) -> set[str]:
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    out.add(fields[9])
    return out


def socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                out.add(target[8:-1])
    return out


def test_after_sigterm_the_supervisor_holds_no_listening_socket(
    relay_factory: Factory, backend: SipBackend
) -> None:
    """The supervisor closes its copies of the relay's listening sockets as soon as it has
    signalled the workers (a stuck worker keeps it waiting here): once the workers closed
    theirs, nothing completes new connections that no one would accept."""
    relay = start(relay_factory, backend, 2, shutdown_timeout=10.0)
    port = relay.port()
    sup = relay.proc.pid
    assert socket_inodes(sup) & listening_inodes(port)
    stuck = worker_pids(relay)[1]
    os.kill(stuck, signal.SIGSTOP)
    try:
        relay.proc.send_signal(signal.SIGTERM)
        relay.wait_log("shutting down: 2 worker(s)", timeout=10)
        deadline = time.monotonic() + 5  # the supervisor waits 15 s for the stuck worker
        while socket_inodes(sup) & listening_inodes(port):
            assert time.monotonic() < deadline, "the supervisor still holds a listener"
            time.sleep(0.05)
        assert relay.proc.poll() is None  # still waiting for the stuck worker
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)


class _NoApi:
    def bind(self, host: str, port: int) -> Any:
        raise AssertionError("no API here")

    def serve(self, control: Any, stats: Any, sock: Any) -> Any:
        raise AssertionError("no API here")


def _supervisor_config(port: int) -> Any:
    from tlstrace.config.load import validate

    return validate(
        {
            "workers": 2,
            "listener": [RelayProcess.tls_listener(5060) | {"listen": f"tls:127.0.0.1:{port}"}],
        },
        "test",
    )


def test_a_rebound_slot_does_not_listen_until_a_worker_serves_it() -> None:
    """After deaths in a row the slot's sockets are bound anew but do not listen: the kernel
    queues no connections on them while no worker accepts."""
    import asyncio
    import socket

    from tests.support.net import free_port
    from tlstrace.supervisor.pool import Supervisor

    async def main() -> None:
        port = free_port()
        sup = Supervisor(_supervisor_config(port), None, None, _NoApi())
        sup.sockets = {0: sup._bind_slot(), 1: sup._bind_slot()}
        try:
            sup._rebind_slot(sup.workers[0])
            (rebound,) = sup.sockets[0].values()
            (kept,) = sup.sockets[1].values()
            assert rebound.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
            assert kept.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            # a worker's server listens on it (uvloop's create_server does)
            server = await asyncio.get_running_loop().create_server(
                asyncio.Protocol, sock=rebound.dup(), backlog=16
            )
            assert rebound.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            server.close()
        finally:
            sup.close_sockets()

    asyncio.run(main())


def test_the_keeper_survives_a_start_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    """A slot whose start raises (out of descriptors, say) is logged and tried again after a
    delay; the keeper does not die with it, and the socket pair's end is closed."""
    import asyncio

    from tests.support.net import free_port
    from tlstrace.supervisor import pool

    class Exited:
        returncode = 1
        pid = 4242

        async def wait(self) -> int:
            return 1

    async def main() -> None:
        sup = pool.Supervisor(_supervisor_config(free_port()), None, None, _NoApi())
        w = sup.workers[0]
        w.proc, w.pid = Exited(), 4242  # type: ignore[assignment]
        tries: list[int] = []

        async def spawn(slot: pool.WorkerHandle) -> str | None:
            tries.append(slot.index)
            if len(tries) < 3:
                raise OSError(24, "Too many open files")
            sup.stopping = True  # the third start "works": the keeper ends
            return None

        sup._spawn = spawn  # type: ignore[method-assign]
        await asyncio.wait_for(sup._keep(w), 30)
        assert tries == [0, 0, 0]

    delays = (pool.FIRST_DELAY, pool.MAX_DELAY)
    pool.FIRST_DELAY = pool.MAX_DELAY = 0.01
    try:
        asyncio.run(main())
    finally:
        pool.FIRST_DELAY, pool.MAX_DELAY = delays
    assert caplog.text.count("worker 0 could not be started again") == 2


def test_connection_ids_keep_their_random_byte_and_name_worker_and_generation() -> None:
    from tlstrace.relay import connection as c

    saved = (c._WORKER, c._COUNTER_MASK, c._counter)
    try:
        c._counter = 0
        one = c.new_connection_id()
        assert one >> 56 == c._RANDOM and (one >> 32) & 0xFFFFFF == c._STARTUP

        ids = {}
        for gen in (0, 1, 4):
            c.set_worker(37, gen)
            c._counter = 0
            ids[gen] = [c.new_connection_id() for _ in range(3)]
        for got in ids.values():
            for conn_id in got:
                assert worker_of(conn_id) == 37
                # the random byte and the start time as in one process
                assert conn_id >> 56 == c._RANDOM
                assert (conn_id >> 32) & 0xFFFFFF == c._STARTUP
        # a replacement (the next generation) in the same second: other ids
        assert not set(ids[0]) & set(ids[1])
        c.set_worker(63, 3)
        c._counter = (1 << 24) - 1  # the counter wraps within its 24 bits
        for conn_id in (c.new_connection_id(), c.new_connection_id()):
            assert worker_of(conn_id) == 63 and (conn_id >> 24) & 0x3 == 3
    finally:
        c._WORKER, c._COUNTER_MASK, c._counter = saved


def test_a_replacement_takes_the_switch_as_its_maker_said_and_the_supervisor_reloads_its_log(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    """After a reload that changed no tracing, a replacement worker's line names who switched
    tracing (the API client), not "the other workers' state"; a reloaded log_format applies
    to the supervisor's own lines too."""
    from tests.support.relay import to_toml

    relay = start(relay_factory, backend, 2, hep_id=[sink.hep_id])
    http = api(relay)
    assert http.put("/api/trace", json={"tracing": "on"}).status_code == 200
    relay.config["log_format"] = "json"
    relay.config_path.write_text(to_toml(relay.config))
    assert http.post("/api/reload").json()["reloaded"] is True
    os.kill(worker_pids(relay)[0], signal.SIGKILL)
    relay.wait_log("worker 0 started again", timeout=30)
    deadline = time.monotonic() + 15
    while True:
        lines = [json.loads(x) for x in relay.log.splitlines() if x.startswith("{")]
        switched = [
            x for x in lines if x.get("worker") == 0 and "tracing switched on" in x["message"]
        ]
        if switched or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # (worker 0's first line was text: before the reload)
    assert switched, [x["message"] for x in lines]
    assert "API client" in switched[-1]["message"], switched[-1]
    assert "other workers' state" not in relay.log
    # the supervisor's own lines after the reload are JSON too
    assert any("worker 0 started again" in x["message"] for x in lines)


def test_merged_tracing_enabled_means_every_worker_as_the_api_says() -> None:
    from tlstrace.control import Counters, TracingCounters
    from tlstrace.relay.stats import RelayStats
    from tlstrace.supervisor.merge import counters, retired

    def worker(on: bool, packets: int) -> Counters:
        tracing = TracingCounters(on, packets, {}, 0)
        return Counters(0.0, RelayStats(), {}, {}, {}, [], tracing, [], [])

    assert counters([worker(True, 1), worker(True, 2)], RelayStats(), 0).tracing.enabled
    mixed = counters([worker(True, 1), worker(False, 2)], RelayStats(), 0).tracing
    assert not mixed.enabled and mixed.packets == 3
    # a dead worker's counters count, its tracing state does not
    dead = retired(worker(False, 5))
    both = counters([worker(True, 1), dead], RelayStats(), 0).tracing
    assert both.enabled and both.packets == 6


def test_events_for_the_supervisor_are_dropped_when_it_does_not_read() -> None:
    """A worker's events for the supervisor's feed stop queueing (dropped, counted) once
    the channel holds FORWARD_BACKLOG bytes: a supervisor that reads nothing costs the worker
    bounded memory."""
    import asyncio
    import socket
    from collections import deque
    from typing import cast

    from tlstrace.feed import EventFeed, Viewer
    from tlstrace.supervisor.channel import open_channel
    from tlstrace.supervisor.worker import FORWARD_BACKLOG, _Forward

    async def main() -> None:
        a, b = socket.socketpair()  # nobody reads b
        _, writer = await open_channel(a)
        feed = EventFeed()
        viewer = Viewer()
        viewer.queue = cast("deque[str]", _Forward(writer))
        feed.viewers.add(viewer)
        event = {"kind": "x", "pad": "p" * 1000}
        for _ in range(3 * FORWARD_BACKLOG // 1000):
            feed.publish(event)
        assert feed.dropped > 0
        assert writer.transport.get_write_buffer_size() < FORWARD_BACKLOG + 2000
        writer.transport.abort()
        b.close()

    asyncio.run(main())
