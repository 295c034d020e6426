"""What worker processes cost and give (`workers` > 1), on this machine:

    python -m bench.workers switch   --workers 8        # a tracing switch reaching every worker
    python -m bench.workers scrape   --workers 2 --conns 10000   # /metrics, /api/connections
    python -m bench.workers throughput --workers 1 2    # saturated 50 x 4, and handshakes

Each case starts the responder (`tlstrace.responder`) and `tlstrace run` with a generated
configuration, drives it (`bench.loadgen` for connections and load; httpx for the API), prints
one JSON object per measurement and stops everything. Times are wall clock, medians of the
repetitions; nothing is pinned, and the load generator shares the machine with the relays: say
so when quoting the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


@contextmanager
def responder() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlstrace.responder", "--listen", f"127.0.0.1:{port}"]
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class Relay:
    def __init__(self, workdir: Path, workers: int, backend: int, **extra: Any) -> None:
        self.port = free_port()
        self.api_port = free_port()
        lines = [
            f"workers = {workers}",
            f'api_listen = "127.0.0.1:{self.api_port}"',
            f'state_dir = "{workdir / "state"}"',
            'log_level = "warning"',
            "tcp_max_connections = 20000",
            *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
            "[[listener]]",
            f'listen = "tls:127.0.0.1:{self.port}"',
            f'backend = "tcp:127.0.0.1:{backend}"',
        ]
        config = workdir / f"tlstrace-{workers}.toml"
        config.write_text("\n".join(lines) + "\n")
        self.log = workdir / f"tlstrace-{workers}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlstrace", "run", "--config", str(config)],
            stderr=open(self.log, "wb"),  # noqa: SIM115
        )
        wait_port(self.api_port)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", timeout=120)
        deadline = time.monotonic() + 60
        while not self.http.get("/readyz").json()["ready"]:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The supervisor's and every worker's (the process's alone with one worker)."""
        out = [self.proc.pid]
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    out.append(int(name))
        return out

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": round(1000 * statistics.median(s), 2),
        "p90_ms": round(1000 * s[int(0.9 * (len(s) - 1))], 2),
        "max_ms": round(1000 * s[-1], 2),
        "n": len(s),
    }


def switch(args: argparse.Namespace, workdir: Path) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    hep = f"127.0.0.1:{sink.getsockname()[1]};transport=udp"
    with responder() as backend:
        for workers in args.workers:
            relay = Relay(workdir, workers, backend, hep_id=[hep])
            try:
                on = {"tracing": "on"}
                off = {"tracing": "off"}
                relay.http.put("/api/trace", json=on)
                samples: list[float] = []
                for i in range(args.repeat):
                    body = on if i % 2 else off
                    samples += timed(partial(relay.http.put, "/api/trace", json=body), 1)
                print(json.dumps({"case": "tracing switch", "workers": workers, **ms(samples)}))
            finally:
                relay.stop()


def scrape(args: argparse.Namespace, workdir: Path) -> None:
    with responder() as backend:
        for workers in args.workers:
            relay = Relay(workdir, workers, backend)
            load = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "idle",
                    "--target",
                    f"tls:127.0.0.1:{relay.port}",
                    "--conns",
                    str(args.conns),
                    "--parallel",
                    "50",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                assert load.stdout is not None and load.stdin is not None
                opened = json.loads(load.stdout.readline())
                count = len(relay.http.get("/api/connections", params={"limit": 100000}).json())
                metrics = timed(partial(relay.http.get, "/metrics"), args.repeat)
                conns = timed(
                    partial(relay.http.get, "/api/connections", params={"limit": args.conns}),
                    max(3, args.repeat // 4),
                )
                print(
                    json.dumps(
                        {
                            "case": "scrape",
                            "workers": workers,
                            "connections": count,
                            "held_by_loadgen": opened["held"],
                            "metrics": ms(metrics),
                            "api_connections": ms(conns),
                        }
                    )
                )
                load.stdin.close()
                load.wait(60)
            finally:
                if load.poll() is None:
                    load.kill()
                relay.stop()


def _loadgen(relay: Relay, mode: str, *extra: str) -> dict[str, Any]:
    cpu = [a for pid in relay.pids() for a in ("--cpu-pid", str(pid))]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            mode,
            "--target",
            f"tls:127.0.0.1:{relay.port}",
            *extra,
            *cpu,
        ],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def throughput(args: argparse.Namespace, workdir: Path) -> None:
    """Saturated: 50 connections with 4 INVITEs in flight each; then new TLS 1.3
    connections (handshake, OPTIONS, close) from 50 concurrent clients."""
    with responder() as backend:
        for workers in args.workers:
            relay = Relay(workdir, workers, backend)
            try:
                d = str(args.duration)
                r = _loadgen(
                    relay, "persistent", "--conns", "50", "--inflight", "4", "--duration", d
                )
                msgs = 2 * r["round_trips"]  # each round trip: a request in, its answer out
                print(
                    json.dumps(
                        {
                            "case": "saturated 50 x 4 INVITE",
                            "workers": workers,
                            "round_trips_per_s": round(r["rate"]),
                            "relay_cpu_us_per_message": round(1e6 * r["relay_cpu_s"] / msgs, 2),
                            "relay_cores": round(r["relay_cpu_s"] / r["window_s"], 2),
                            "loadgen_cores": round(r["loadgen_cpu_s"] / r["window_s"], 2),
                        }
                    )
                )
                h = _loadgen(relay, "handshake", "--conns", "50", "--duration", d)
                print(
                    json.dumps(
                        {
                            "case": "new TLS 1.3 connections, 50 clients",
                            "workers": workers,
                            "handshakes_per_s": round(h["rate"]),
                            "relay_cpu_us_per_handshake": round(
                                1e6 * h["relay_cpu_s"] / max(1, h["operations"])
                            ),
                            "relay_cores": round(h["relay_cpu_s"] / h["window_s"], 2),
                            "loadgen_cores": round(h["loadgen_cpu_s"] / h["window_s"], 2),
                            "errors": h["errors"],
                        }
                    )
                )
            finally:
                relay.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    p.add_argument("case", choices=["switch", "scrape", "throughput"])
    p.add_argument("--workers", type=int, nargs="+", default=[8])
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tlstrace-bench-workers-") as tmp:
        {"switch": switch, "scrape": scrape, "throughput": throughput}[args.case](args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
