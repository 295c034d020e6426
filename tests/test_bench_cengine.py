"""The benchmark's C load engine (`bench/cgen/loadgen.c`, driven by `bench/cengine.py`): built
with gcc and OpenSSL, run for about a second through a real tlstrace, it keeps the contract of
`python -m bench.loadgen persistent` (`--sync`, the result's keys, CPU samples), sends exactly
the Python engine's request bytes (distinct Call-IDs per `--index`), and counts answers that
are not 200 OK; `python -m bench` falls back to the Python engine, saying so, when it cannot be
built. Skipped when gcc or the OpenSSL headers (libssl-dev) are missing."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import cengine, report
from bench.loadgen import invite
from bench.run import choose_engine, engine_for, jobs_for
from bench.targets import REGIMES
from tests.support.backend import SipBackend
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tlstrace.sip.framing import Message, SipFramer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The C engine built into a fresh cache directory (the runs below find it there)."""
    cache = tmp_path_factory.mktemp("cengine-cache")
    old = os.environ.get("TLSTRACE_BENCH_CACHE")
    os.environ["TLSTRACE_BENCH_CACHE"] = str(cache)
    try:
        try:
            path = cengine.build()
        except cengine.BuildError as e:
            pytest.skip(f"the C load engine cannot be built here (needs gcc and libssl-dev): {e}")
        yield path
    finally:
        if old is None:
            os.environ.pop("TLSTRACE_BENCH_CACHE", None)
        else:
            os.environ["TLSTRACE_BENCH_CACHE"] = old


def run_loadgen(target: str, *extra: str, sync: bool = True) -> tuple[dict[str, Any], int | None]:
    """`python -m bench.loadgen persistent` for about a second; its result and, with `sync`,
    the count in its `{"ready": N}` line."""
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "persistent",
        "--target",
        target,
        "--conns",
        "3",
        "--inflight",
        "2",
        "--warmup",
        "0.3",
        "--duration",
        "0.8",
        *extra,
    ]
    if sync:
        argv.append("--sync")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    ready = None
    try:
        if sync:
            ready = json.loads(proc.stdout.readline())["ready"]
            proc.stdin.write(f"{time.time() + 0.1:.6f}\n")
            proc.stdin.flush()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1]), ready


def test_c_engine_keeps_the_python_engines_contract_through_tlstrace(
    engine: Path, relay: RelayProcess, backend: SipBackend
) -> None:
    target = f"tls:127.0.0.1:{relay.port()}"
    pids = ["--cpu-pid", str(relay.proc.pid), "--side-pid", str(os.getpid())]
    c, ready = run_loadgen(target, "--engine", "c", "--index", "3", "--size", "700", *pids)
    assert ready == 3
    py, _ = run_loadgen(target, "--engine", "python", "--index", "4", *pids)
    # the same keys as the Python engine's result, and which engine ran
    assert set(c) - {"send"} == set(py)
    assert (c["engine"], c["send"], py["engine"]) == ("c", "each", "python")
    assert (c["mode"], c["target"], c["conns"], c["inflight"]) == ("persistent", target, 3, 2)
    assert c["message_size"] == 700
    assert c["errors"] == 0 and c["bad_responses"] == 0 and c["error_samples"] == []
    assert c["round_trips"] > 0 and c["sent_in_window"] > 0
    assert c["rate"] == pytest.approx(c["round_trips"] / c["window_s"])
    assert sum(c["latency_hist"].values()) == c["round_trips"]
    lat = c["latency_ms"]
    assert set(lat) == {"p50", "p99", "p99.9", "max"}
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    for key in ("relay_cpu_s", "loadgen_cpu_s", "side_cpu_s"):
        assert isinstance(c[key], float) and c[key] >= 0
    assert c["core_busy_s"].keys() == py["core_busy_s"].keys()
    # the bytes relayed are the Python engine's requests: invite(index << 24 + i, size)
    wanted = {invite((3 << 24) + i, 700) for i in range(1024)}
    got = [m for conn in backend.conns for m in conn.messages if b"-bench@" in m]
    c_msgs = [m for m in got if m in wanted]
    assert c_msgs and all(len(m) == 700 for m in c_msgs)
    others = {invite((4 << 24) + i, 600) for i in range(1024)}
    assert all(m in wanted or m in others for m in got)


class _Busy(asyncio.Protocol):
    """A TLS SIP server that answers every request 486 Busy Here."""

    def __init__(self) -> None:
        self.framer = SipFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        n = sum(isinstance(ev, Message) for ev in self.framer.feed(data))
        self.transport.write(b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n\r\n" * n)


@pytest.fixture
def busy_server(pki: Pki) -> Iterator[int]:
    leaf = pki.leaf("busy.test", names=["busy.test"], tag="busy")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Busy, "127.0.0.1", 0, ssl=ctx))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_c_engine_counts_answers_that_are_not_200(engine: Path, busy_server: int) -> None:
    result, _ = run_loadgen(
        f"tls:127.0.0.1:{busy_server}", "--engine", "c", "--send", "each", sync=False
    )
    assert result["send"] == "each"
    assert result["round_trips"] > 0
    assert result["bad_responses"] >= result["round_trips"]
    assert result["relay_cpu_s"] is None and result["side_cpu_s"] is None


def test_c_engine_refuses_loads_it_does_not_drive() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "persistent",
            "--engine",
            "c",
            "--target",
            "wss:127.0.0.1:1",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "tls: and tcp:" in r.stderr


def _bench_args(**kw: Any) -> argparse.Namespace:
    from bench.run import build_parser

    return build_parser().parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_engine_per_regime_and_target() -> None:
    args = _bench_args(repeat=1, duration=3)
    assert args.engine == "c"
    sat, sparse = REGIMES["saturated"], REGIMES["sparse"]
    job = jobs_for(sat, args)[0]
    assert engine_for(sat, job, "tls:127.0.0.1:1", "c") == "c"
    assert engine_for(REGIMES["tracing"], job, "tls:127.0.0.1:1", "c") == "c"
    assert engine_for(sat, job, "wss:127.0.0.1:1", "c") == "python"  # the tlstrace-wss line
    assert engine_for(sat, job, "tls:127.0.0.1:1", "python") == "python"
    assert engine_for(sparse, jobs_for(sparse, args)[0], "tls:127.0.0.1:1", "c") == "python"
    title = report.regime_title(
        sat, args, {"engines": {"tlstrace": "c", "tlstrace-wss": "python", "haproxy": "c"}}
    )
    assert "load generator: C (OpenSSL + epoll, batched sends) (tlstrace-wss: Python)" in title


def test_bench_falls_back_to_python_when_the_engine_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TLSTRACE_BENCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    args = _bench_args()
    assert choose_engine(args, ["sparse"]) is None and args.engine == "c"  # not needed
    why = choose_engine(args, ["saturated"])
    assert why is not None and "no-such-compiler" in why
    assert args.engine == "python"
    out = capsys.readouterr()
    assert "WARNING: the C load generator cannot be built" in out.out
    assert "PYTHON generator" in out.err
