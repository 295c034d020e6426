"""`python -m bench` (= `make bench`): tlstrace beside HAProxy, in every regime of issue 10.

Each regime (`--regime NAME`, repeatable; see `--help` for the list) runs its targets in turn,
`--repeat` times, interleaved so that each tlstrace run has its HAProxy run next to it in time;
the tables give medians, and each line's ratio to HAProxy is the median of those paired ratios.

- saturated: 50 TLS connections x 4 INVITEs in flight (closed loop) from `--generators` load
  generator processes (the C engine, `--engine c`, falling back to Python when it cannot be
  built; the WSS line always Python), nothing pinned; the relay's own CPU use ('relay core')
  shows whether it is the bottleneck.
- sparse: 400 and 1,000 connections x 1 in flight, nothing pinned.
- paced: 5,000 connections, an open loop at a steady 2,000 requests/s in total, nothing
  pinned; and the same at the `--rates` of the sweep drawn by `python -m bench.plot`.
- handshake: 50 workers, each looping TLS 1.3 handshake (ECDSA P-256) + one OPTIONS + clean
  close; CPU per new connection. Generator on core 0, relay on core 1.
- tracing: the saturated load with every message traced as HEP to a UDP sink, and to a TCP
  sink (`bench/sink.py`, `bench/tcp_sink.py`); HAProxy, which traces nothing, beside it.
- memory: N idle TLS connections (default 10,000); resident memory per connection once RSS
  settles. Generator on core 0, relay (two processes sharing the port) on core 1.
- pinned (only when asked for): the former 'persistent' scenario, 50 x 4 with the generator
  and the responder on core 0 and the relay on core 1: the generator is the bottleneck.

Targets: `direct` (the load generator straight to the responder over plain TCP: the floor;
pinned regimes only), `tlstrace` and its variants, `haproxy` (HAProxy 2.6, one thread,
`mode tcp`, `bind ... ssl crt`) when installed. A relay's CPU is utime+stime of its
process(es) from /proc/PID/stat, sampled by the (first) load generator at the start and end of
the measurement window, divided by the operations in it (a round trip is 2 relayed messages).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import select
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.loadgen import hist_percentiles
from bench.procs import (
    Child,
    ProcessError,
    Procs,
    core_busy,
    open_fds,
    raise_fd_limit,
    rss_kib,
)
from bench.targets import (
    DEFAULT_REGIMES,
    LOAD_CPU,
    REGIMES,
    SCENARIO_ALIASES,
    VARIANTS,
    Pki,
    Regime,
    Target,
    Variant,
    haproxy_path,
    make_pki,
    selected,
    start_responder,
    start_sink,
    start_target,
    stop_target,
)

RESULTS = Path(__file__).resolve().parent / "results"


# -- machine load --------------------------------------------------------------------------


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to max_wait s) until no core is more than `threshold` busy with work that is not
    ours (nothing of ours runs between measurements). Returns the last busy fraction seen."""
    deadline = time.monotonic() + max_wait
    while True:
        a, t0 = core_busy(), time.monotonic()
        time.sleep(0.5)
        b, t1 = core_busy(), time.monotonic()
        worst = max((b[k] - a[k]) / (t1 - t0) for k in b)
        if worst <= threshold or time.monotonic() >= deadline:
            return worst


# -- what one load generator run is ------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One load generator run (of one or several processes) against each target."""

    case: str  # the table's "case" column; paced runs give one case per rate
    mode: str  # bench.loadgen's mode
    conns: int
    extra: tuple[str, ...] = ()
    generators: int = 1
    sync: bool = True
    rates: tuple[float, ...] = ()


def paced_case(conns: int, rate: float) -> str:
    return f"{conns:,} conns @ {rate:,.0f}/s"


def jobs_for(regime: Regime, args: argparse.Namespace, rep: int = 0) -> list[Job]:
    size = ("--size", str(args.size))
    if regime.name in ("saturated", "tracing"):
        return [
            Job(
                f"{args.conns} x {args.inflight}",
                "persistent",
                args.conns,
                ("--inflight", str(args.inflight), *size),
                generators=args.generators,
            )
        ]
    if regime.name == "pinned":
        return [
            Job(
                f"{args.conns} x {args.inflight}",
                "persistent",
                args.conns,
                ("--inflight", str(args.inflight), *size),
            )
        ]
    if regime.name == "sparse":
        return [
            Job(f"{n:,} x 1", "persistent", n, ("--inflight", "1", *size), generators=1)
            for n in args.sparse
        ]
    if regime.name == "paced":
        # the sweep's other rates only in the first --sweep-repeat repetitions
        sweep = args.rates if rep < args.sweep_repeat else []
        rates = tuple(sorted({*sweep, args.paced_rate}))
        return [
            Job(
                "paced",
                "paced",
                args.paced_conns,
                size,
                generators=args.paced_generators,
                rates=rates,
            )
        ]
    if regime.name == "handshake":
        return [Job(f"{args.workers} workers", "handshake", args.workers, sync=False)]
    raise ValueError(regime.name)


#: the regimes whose load generator may run on the C engine (`--engine c`, tls: targets)
C_ENGINE_REGIMES = ("saturated", "tracing")


def engine_for(regime: Regime, job: Job, address: str, engine: str) -> str:
    """Which load generator engine runs `job` against a target at `address`: the C one
    (`bench/cgen/loadgen.c`) for the closed loop of the saturated and tracing regimes over TLS
    when `--engine c` (and it built); the Python one for everything else (WSS among them)."""
    if (
        engine == "c"
        and regime.name in C_ENGINE_REGIMES
        and job.mode == "persistent"
        and address.startswith("tls:")
    ):
        return "c"
    return "python"


def engine_label(run: dict[str, Any]) -> str:
    """A run's engine for the tables: "python", "c" (batched sends) or "c-each"."""
    engine = str(run.get("engine", "python"))
    return "c-each" if engine == "c" and run.get("send") == "each" else engine


def metric_key(regime: Regime) -> str:
    return "cpu_us_per_handshake" if regime.load == "handshake" else "cpu_us_per_msg"


# -- load generator runs -------------------------------------------------------------------


class Bench:
    """Runs one regime: its targets started once, each job `--repeat` times, the targets
    interleaved within each repetition (tlstrace and HAProxy next to each other in time)."""

    def __init__(
        self,
        args: argparse.Namespace,
        procs: Procs,
        workdir: Path,
        pki: Pki,
        regime: Regime,
        variants: Sequence[Variant],
    ) -> None:
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.pki = pki
        self.regime = regime
        self.variants = variants
        self.hep: str | None = None
        self.hep_tcp: str | None = None
        self.sinks: dict[str, Child] = {}

    def log(self, msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    @property
    def pinned(self) -> bool:
        return self.regime.pinned

    def run(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "regime": self.regime.name,
            "pinned": self.pinned,
            "about": self.regime.describe(vars(self.args)),
        }
        if self.regime.load == "paced":
            data["headline"] = paced_case(self.args.paced_conns, self.args.paced_rate)
        try:
            if any(v.needs_hep for v in self.variants):
                self.sinks["udp"], self.hep = start_sink(self.procs, "udp", self.pinned)
            if any(v.needs_hep_tcp for v in self.variants):
                self.sinks["tcp"], self.hep_tcp = start_sink(self.procs, "tcp", self.pinned)
            if self.regime.load == "memory":
                data.update(self.memory())
            else:
                data.update(self.rate_regime())
        finally:
            if self.sinks:
                data["hep_sinks"] = {t: stop_sink(self.procs, c) for t, c in self.sinks.items()}
        return data

    def start_target(self, v: Variant, backend_port: int, processes: int = 1) -> Target:
        return start_target(
            v,
            self.procs,
            self.workdir,
            self.pki,
            backend_port=backend_port,
            processes=processes,
            hep=self.hep,
            hep_tcp=self.hep_tcp,
            tag=f"-{self.regime.name}",
            pinned=self.pinned,
        )

    def loadgen(self, job: Job, target: Target, responder: Child) -> dict[str, Any]:
        """One run of `job` against `target`: its generator processes share the connections
        and, with `sync`, one measurement window; the first samples the CPU of the relay and
        of the side processes (responder, HEP sinks)."""
        a = self.args
        n = max(1, min(job.generators, job.conns))
        gens: list[Child] = []
        name = f"loadgen-{job.mode}-{target.variant.name}"
        engine = engine_for(self.regime, job, target.address, a.engine)
        try:
            for i in range(n):
                conns = job.conns // n + (1 if i < job.conns % n else 0)
                argv = [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    job.mode,
                    "--target",
                    target.address,
                    "--conns",
                    str(conns),
                    "--warmup",
                    str(a.warmup),
                    "--duration",
                    str(a.duration),
                    "--index",
                    str(i),
                    *job.extra,
                ]
                if engine != "python":
                    argv += ["--engine", engine, "--send", a.c_send]
                for r in job.rates:  # each process sends its share of the total
                    argv += ["--rate", f"{r / n:g}"]
                if job.sync:
                    argv.append("--sync")
                if i == 0:
                    for pid in target.pids:
                        argv += ["--cpu-pid", str(pid)]
                    for c in [responder, *self.sinks.values()]:
                        argv += ["--side-pid", str(c.pid)]
                gens.append(
                    self.procs.start(
                        f"{name}.{i}",
                        argv,
                        cpus={LOAD_CPU} if self.pinned else None,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
            if job.sync:
                for g in gens:
                    _read_line(g, timeout=60 + job.conns / 50)  # {"ready": N}
                start = f"{time.time() + 0.3:.6f}\n".encode()
                for g in gens:
                    assert g.popen.stdin is not None
                    g.popen.stdin.write(start)
                    g.popen.stdin.flush()
            windows = max(1, len(job.rates)) * (a.warmup + a.duration)
            results = []
            for g in gens:
                try:
                    out, _ = g.popen.communicate(timeout=windows + 60)
                except subprocess.TimeoutExpired:
                    raise ProcessError(f"load generator {g.name} timed out") from None
                lines = out.decode(errors="replace").strip().splitlines()
                if g.popen.returncode != 0 or not lines:
                    raise ProcessError(
                        f"load generator {g.name} failed (exit {g.popen.returncode}):\n"
                        f"{g.log_tail()}"
                    )
                results.append(json.loads(lines[-1]))
        finally:
            for g in gens:
                self.procs.stop(g)
        for c in target.children:
            if not c.alive():
                raise ProcessError(
                    f"{c.name} died during the run ({_exit_text(c)}):\n{c.log_tail()}"
                )
        merged = merge(results)
        merged["engine"] = engine
        return merged

    def rate_regime(self) -> dict[str, Any]:
        tag = f"-{self.regime.name}"
        responder, rport = start_responder(self.procs, tag, pinned=self.pinned)
        targets: list[Target] = []
        cases: dict[str, dict[str, list[dict[str, Any]]]] = {}
        errors: dict[str, list[str]] = {v.name: [] for v in self.variants}
        #: the load generator engine each target's runs used ("c" or "python")
        engines: dict[str, str] = {}

        def start(v: Variant) -> Target | None:
            try:
                return self.start_target(v, rport)
            except ProcessError as e:
                errors[v.name].append(str(e))
                self.log(f"{v.name}: cannot start: {e}")
                return None

        try:
            targets = [t for t in map(start, self.variants) if t is not None]
            for rep in range(self.args.repeat):
                for job in jobs_for(self.regime, self.args, rep):
                    for i, t in enumerate(targets):
                        name = t.variant.name
                        for _attempt in range(2):  # one retry when a process was lost mid-run
                            # something else on the machine may have ended a process: restart
                            if not responder.alive():
                                self.log(f"responder gone ({_exit_text(responder)}): restarting")
                                self.procs.stop(responder)
                                responder, _ = start_responder(
                                    self.procs, tag, port=rport, pinned=self.pinned
                                )
                            if not all(c.alive() for c in t.children):
                                self.log(f"{name} gone ({_exit_text(t.children[0])}): restarting")
                                stop_target(t, self.procs)
                                restarted = start(t.variant)
                                if restarted is None:
                                    break
                                targets[i] = t = restarted
                            before = wait_quiet(self.args.quiet_wait)
                            try:
                                raw = self.loadgen(job, t, responder)
                                if not responder.alive():
                                    raise ProcessError(
                                        f"the responder died during the run "
                                        f"({_exit_text(responder)})"
                                    )
                                _check_errors(job.mode, raw, self.args.paced_rate)
                            except ProcessError as e:
                                errors[name].append(str(e))
                                self.log(f"{self.regime.name} {job.case} {name} run {rep + 1}: {e}")
                                continue
                            kept = split_windows(job, raw)
                            if len(kept) < len(raw.get("windows", kept)):
                                lost = raw["windows"][len(kept)]
                                note = (
                                    f"paced run {rep + 1}: connections lost at "
                                    f"{lost['offered_rate']:,.0f}/s; that rate and the higher "
                                    f"ones are left out: {raw.get('error_samples')}"
                                )
                                errors[name].append(note)
                                self.log(f"{name} {note}")
                            for case, one in kept:
                                one["busy_before_run"] = before
                                one["rep"] = rep
                                one.update(per_operation(job.mode, one))
                                cases.setdefault(case, {v.name: [] for v in self.variants})
                                cases[case][name].append(one)
                                engines[name] = engine_label(one)
                                self.log(
                                    f"{self.regime.name} {case} {name} run {rep + 1}/"
                                    f"{self.args.repeat}: {report.brief(job.mode, one)}"
                                )
                            break
        finally:
            for t in targets:
                stop_target(t, self.procs)
            self.procs.stop(responder)
        return {
            "cases": {case: {"runs": runs} for case, runs in cases.items()},
            "errors": errors,
            "engines": engines,
        }

    # -- memory ------------------------------------------------------------------------------

    def memory(self) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in self.variants}
        errors: dict[str, list[str]] = {v.name: [] for v in self.variants}
        for rep in range(self.args.memory_repeat):
            for v in self.variants:
                wait_quiet(self.args.quiet_wait)
                try:
                    raw = self.memory_once(v)
                except ProcessError as e:
                    errors[v.name].append(str(e))
                    self.log(f"memory {v.name} run {rep + 1}: {e}")
                    continue
                raw["rep"] = rep
                runs[v.name].append(raw)
                self.log(
                    f"memory {v.name} run {rep + 1}/{self.args.memory_repeat}: "
                    f"{report.brief('memory', raw)}"
                )
        return {"cases": {f"{self.args.idle:,} idle": {"runs": runs}}, "errors": errors}

    def memory_once(self, v: Variant) -> dict[str, Any]:
        n = self.args.idle
        responder, rport = start_responder(self.procs, f"-memory-{v.name}", pinned=self.pinned)
        target: Target | None = None
        gen: Child | None = None
        try:
            processes = 1 if v.kind == "direct" else 2
            target = self.start_target(v, rport, processes=processes)
            # direct: what the responder itself holds per plain TCP connection
            measured = target.children or [responder]
            time.sleep(1.0)
            before = [rss_kib(c.pid) for c in measured]
            argv = [
                sys.executable,
                "-m",
                "bench.loadgen",
                "idle",
                "--target",
                target.address,
                "--conns",
                str(n),
                "--parallel",
                "100",
            ]
            gen = self.procs.start(
                f"loadgen-idle-{v.name}",
                argv,
                cpus={LOAD_CPU} if self.pinned else None,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            opened = json.loads(_read_line(gen, timeout=max(60.0, n / 100)))
            # settle: RSS unchanged (within 0.5 %, 256 KiB at least) between two samples one
            # second apart, after 2 s at least and 20 s at most
            start = time.monotonic()
            last = sum(rss_kib(c.pid) for c in measured)
            settled = False
            while time.monotonic() - start < 20:
                time.sleep(1.0)
                now = sum(rss_kib(c.pid) for c in measured)
                if abs(now - last) <= max(256, last * 0.005) and time.monotonic() - start >= 2:
                    settled = True
                    break
                last = now
            after = [rss_kib(c.pid) for c in measured]
            fds = [open_fds(c.pid) for c in measured]
            # the connections still open once RSS settled: what the memory is divided by
            assert gen.popen.stdin is not None
            gen.popen.stdin.write(b"count\n")
            gen.popen.stdin.flush()
            still = int(json.loads(_read_line(gen, timeout=30))["still_open"])
            for c in measured:
                if not c.alive():
                    raise ProcessError(
                        f"{c.name} died holding the connections ({_exit_text(c)}):\n{c.log_tail()}"
                    )
            delta = sum(after) - sum(before)
            if still < n:
                raise ProcessError(
                    f"{n - still} of {n} idle connections lost "
                    f"(opened {opened['held']}, errors {opened['error_samples']})"
                )
            return {
                "wanted": n,
                "held": still,
                "held_after_open": opened["held"],
                "errors": opened["errors"],
                "error_samples": opened["error_samples"],
                "open_s": opened["open_s"],
                "settled": settled,
                "processes": len(measured),
                "measured": "responder" if v.kind == "direct" else v.name,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "fds": fds,
                "kib_per_conn": delta / still if still else None,
            }
        finally:
            if gen is not None:
                self.procs.stop(gen)
            if target is not None:
                stop_target(target, self.procs)
            self.procs.stop(responder)


def _merge_window(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One measurement window from the generator processes' windows: the first one's times and
    CPU samples (it samples the relay), everyone's counts, CPU and latency histograms."""
    first = dict(parts[0])
    hist: dict[str, int] = {}
    for r in parts:
        for k, c in r.get("latency_hist", {}).items():
            hist[k] = hist.get(k, 0) + c
    first.pop("latency_hist", None)
    if len(parts) == 1:
        return first  # its exact percentiles
    for key in ("round_trips", "sent_in_window", "bad_responses", "errors", "conns"):
        if key in first:
            first[key] = sum(r.get(key, 0) for r in parts)
    if "offered_rate" in first:
        first["offered_rate"] = sum(r["offered_rate"] for r in parts)
    first["loadgen_cpu_s"] = sum(r["loadgen_cpu_s"] for r in parts)
    first["rate"] = first["round_trips"] / first["window_s"]
    first["latency_ms"] = hist_percentiles(hist)
    return first


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's result from its generator processes' (see `_merge_window`); a paced run's
    windows are merged rate by rate."""
    if "windows" in results[0]:
        out = dict(results[0])
        for key in ("sent", "unanswered", "bad_responses", "errors", "conns"):
            out[key] = sum(r.get(key, 0) for r in results)
        out["windows"] = [
            _merge_window([r["windows"][i] for r in results])
            for i in range(len(results[0]["windows"]))
        ]
    else:
        out = _merge_window(results)
    out["error_samples"] = [e for r in results for e in r.get("error_samples", [])][:3]
    out["generators"] = len(results)
    return out


def split_windows(job: Job, raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A paced run's windows as one result per rate, up to the first that lost a connection
    (the rates go up: a rate the relay cannot take must not void the lower ones'); any other
    run as it is."""
    if job.mode != "paced":
        return [(job.case, raw)]
    out = []
    for i, w in enumerate(raw["windows"]):
        if w.get("errors"):
            break
        one = {
            **{k: v for k, v in raw.items() if k != "windows"},
            **w,
        }
        # the total asked for (each generator process reports its share)
        if i < len(job.rates):
            one["offered_rate"] = job.rates[i]
        out.append((paced_case(job.conns, one["offered_rate"]), one))
    return out


def per_operation(mode: str, raw: dict[str, Any]) -> dict[str, Any]:
    cpu = raw.get("relay_cpu_s")
    if mode == "handshake":
        n = raw["operations"]
        return {
            "cpu_us_per_handshake": cpu / n * 1e6 if cpu is not None and n else None,
            **_load_shares(raw),
        }
    n = raw["round_trips"]
    gen, side = raw.get("loadgen_cpu_s"), raw.get("side_cpu_s")
    return {
        "cpu_us_per_round_trip": cpu / n * 1e6 if cpu is not None and n else None,
        # what the load generators (all processes) and the side processes (responder, HEP
        # sinks) spent per round trip: the cost of offering the load
        "loadgen_us_per_round_trip": gen / n * 1e6 if gen is not None and n else None,
        "side_us_per_round_trip": side / n * 1e6 if side is not None and n else None,
        # a round trip is two relayed messages: the request and its response
        "cpu_us_per_msg": cpu / (2 * n) * 1e6 if cpu is not None and n else None,
        **_load_shares(raw),
    }


def _check_errors(mode: str, raw: dict[str, Any], headline: float | None = None) -> None:
    """A run that lost connections measured something else: count it as failed. A paced run
    fails when it lost one by the end of the `headline` rate's window; its later windows
    are left out (`split_windows`)."""
    errs = raw.get("errors", 0)
    if mode == "paced" and headline is not None:
        errs = next(
            (
                w.get("errors", 0)
                for w in raw["windows"]
                if w["offered_rate"] >= headline * 0.999  # the shares add up to about it
            ),
            errs,
        )
    if mode in ("persistent", "paced") and errs:
        raise ProcessError(f"{errs} connection(s) lost during the run: {raw.get('error_samples')}")
    if mode in ("persistent", "paced") and raw.get("bad_responses"):
        raise ProcessError(f"{raw['bad_responses']} answers were not 200 OK")
    if mode == "handshake" and errs > max(5, raw.get("operations", 0) // 100):
        raise ProcessError(f"{errs} failed connections: {raw.get('error_samples')}")


def _exit_text(c: Child) -> str:
    rc = c.popen.returncode
    if rc is not None and rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _read_line(child: Child, timeout: float) -> str:
    """The next line the child prints, within `timeout` seconds (read byte-wise from the pipe
    so that nothing after the line is consumed)."""
    out = child.popen.stdout
    assert out is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = out.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProcessError(f"{child.name} printed nothing within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                raise ProcessError(f"{child.name} exited:\n{child.log_tail()}")
            buf += chunk
        elif not child.alive():
            raise ProcessError(f"{child.name} exited:\n{child.log_tail()}")
    return buf.decode().strip()


def _load_shares(raw: dict[str, Any]) -> dict[str, Any]:
    """How busy the relay was (% of one core), and how much CPU went to processes not ours."""
    w = raw["window_s"]
    busy = raw.get("core_busy_s") or {}
    relay = raw.get("relay_cpu_s") or 0.0
    ours = relay + raw.get("loadgen_cpu_s", 0.0) + (raw.get("side_cpu_s") or 0.0)
    return {
        "relay_core_pct": relay / w * 100 if raw.get("relay_cpu_s") is not None else None,
        "load_core_pct": (raw.get("loadgen_cpu_s", 0.0) + (raw.get("side_cpu_s") or 0.0)) / w * 100,
        # busy time of all cores not spent in the relay, load generator or responder
        "other_pct": max(0.0, sum(busy.values()) - ours) / w * 100 if busy else None,
    }


# -- summary -------------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize_case(
    metric: str,
    runs: dict[str, list[dict[str, Any]]],
    baselines: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Per-metric medians over the runs of each variant, and each variant's ratio to HAProxy
    paired by repetition: the median of (variant / HAProxy) over the repetitions, each pair
    measured next to each other in time. A variant whose `baselines` entry names another line
    (a load HAProxy cannot relay) gets its ratio to that line instead, as `vs_NAME`, and its
    `baseline` says so."""
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        if not rs:
            out[name] = {"runs": 0}
            continue
        s: dict[str, Any] = {"runs": len(rs)}
        if metric == "kib_per_conn":
            for key in ("kib_per_conn", "held", "errors", "open_s"):
                s[key] = median([r[key] for r in rs])
            s["rss_before_kib"] = median([sum(r["rss_before_kib"]) for r in rs])
            s["rss_after_kib"] = median([sum(r["rss_after_kib"]) for r in rs])
            s["processes"] = rs[-1]["processes"]
            s["fds"] = rs[-1]["fds"]
            s["measured"] = rs[-1]["measured"]
        else:
            keys = [
                "offered_rate",
                "rate",
                "cpu_us_per_msg",
                "cpu_us_per_round_trip",
                "cpu_us_per_handshake",
                "relay_core_pct",
                "load_core_pct",
                "loadgen_us_per_round_trip",
                "side_us_per_round_trip",
                "other_pct",
                "errors",
            ]
            for key in keys:
                if key in rs[0]:
                    s[key] = median([r.get(key) for r in rs])
            for q in ("p50", "p99", "p99.9"):
                s[q] = median([r["latency_ms"][q] for r in rs])
        vals = [r[metric] for r in rs if r.get(metric) is not None]
        if vals:
            s["range"] = [min(vals), max(vals)]
        # per repetition, to pair with the run of another target made right before/after
        s["by_rep"] = {str(r["rep"]): r.get(metric) for r in rs}
        out[name] = s
    for name, s in out.items():
        base = (baselines or {}).get(name, "haproxy")
        if name == base or not s.get("runs"):
            continue
        if base != "haproxy":
            s["baseline"] = base
        ref = out.get(base, {}).get("by_rep", {})
        pairs = [
            s["by_rep"][k] / ref[k] for k in sorted(s["by_rep"]) if s["by_rep"][k] and ref.get(k)
        ]
        if pairs:
            s[f"vs_{base}_pairs"] = pairs
            s[f"vs_{base}"] = statistics.median(pairs)
    return out


def summarize(regime: Regime, data: dict[str, Any]) -> None:
    metric = "kib_per_conn" if regime.load == "memory" else metric_key(regime)
    data["metric"] = metric
    baselines = {v.name: v.baseline for v in VARIANTS}
    for case in data["cases"].values():
        case["summary"] = summarize_case(metric, case["runs"], baselines)


# -- main ----------------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected rates such as 500,1000") from None


def _counts(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected counts such as 400,1000") from None


def build_parser() -> argparse.ArgumentParser:
    defaults = {
        "conns": 50,
        "inflight": 4,
        "generators": 2,
        "sparse": [400, 1000],
        "paced_conns": 5000,
        "paced_rate": 2000,
        "paced_generators": 2,
        "workers": 50,
        "idle": 10000,
    }
    regimes = "\n".join(
        f"  {r.name:10} {r.describe(defaults)}{' (default)' if r.name in DEFAULT_REGIMES else ''}"
        for r in REGIMES.values()
    )
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=f"regimes:\n{regimes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--regime",
        action="append",
        choices=list(REGIMES),
        help="run only this regime (repeatable; default: "
        + ", ".join(DEFAULT_REGIMES)
        + "; 'pinned' only when asked for)",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIO_ALIASES),
        help="the former names: persistent (= --regime pinned), handshake, memory",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 3 s windows, one repetition, 2,000 idle connections, 1,000 paced "
        "connections at the paced rate only (unless given otherwise)",
    )
    p.add_argument("--repeat", type=int, default=None, help="runs per target (default 3)")
    p.add_argument(
        "--memory-repeat",
        type=int,
        default=None,
        help="runs per target of the memory regime (default 1: it varies little)",
    )
    p.add_argument(
        "--duration", type=float, default=None, help="measurement window in seconds (default 6)"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    p.add_argument(
        "--idle",
        type=int,
        default=None,
        help="idle TLS connections in the memory regime (default 10000)",
    )
    p.add_argument("--conns", type=int, default=50, help="saturated/tracing/pinned: connections")
    p.add_argument(
        "--inflight", type=int, default=4, help="saturated/tracing/pinned: requests in flight each"
    )
    p.add_argument(
        "--generators",
        type=int,
        default=2,
        help="saturated/tracing: load generator processes sharing the connections (default 2)",
    )
    p.add_argument(
        "--sparse",
        type=_counts,
        default=[400, 1000],
        help="sparse: connection counts, 1 in flight each (default 400,1000)",
    )
    p.add_argument(
        "--paced-conns", type=int, default=None, help="paced: connections (default 5000)"
    )
    p.add_argument(
        "--paced-rate",
        type=float,
        default=2000.0,
        help="paced: the headline rate, requests/s in total (default 2000)",
    )
    p.add_argument(
        "--rates",
        type=_rates,
        default=None,
        help="paced: the other rates of the sweep the plot draws (default "
        "500,1000,4000,8000,16000; '' for none)",
    )
    p.add_argument(
        "--paced-generators",
        type=int,
        default=2,
        help="paced: load generator processes, each sending its share of the rate (default 2)",
    )
    p.add_argument(
        "--sweep-repeat",
        type=int,
        default=1,
        help="paced: repetitions that run the whole sweep; the others run the headline rate "
        "only (default 1)",
    )
    p.add_argument("--size", type=int, default=600, help="INVITE size in bytes")
    p.add_argument(
        "--engine",
        choices=["c", "python"],
        default="c",
        help="saturated/tracing over TLS: the load generator's engine; 'c' (default) is "
        "bench/cgen/loadgen.c, built on demand with gcc and OpenSSL (falls back to 'python', "
        "saying so, when it cannot be built); every other load runs on the Python engine",
    )
    p.add_argument(
        "--c-send",
        choices=["batch", "each"],
        default="each",
        help="the C engine's sends: one send() per request ('each', default: the Python "
        "engine's pattern, so the relay sees the same reads), or the requests one read's "
        "answers call for in one send() ('batch': fewer, larger reads, which favour a relay "
        "that batches); one TLS record per request either way",
    )
    p.add_argument("--workers", type=int, default=50, help="handshake workers")
    p.add_argument("--no-haproxy", action="store_true", help="skip HAProxy even if installed")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other load on the "
        "machine to drop below 15%% of a core",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG of CPU per message against offered load (the paced regime; needs matplotlib, "
        "pip install -e '.[bench]'); default: beside the JSON when the paced regime ran",
    )
    return p


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def chosen_regimes(args: argparse.Namespace) -> list[str]:
    wanted = set(args.regime or []) | {SCENARIO_ALIASES[s] for s in args.scenario or []}
    if not wanted:
        wanted = set(DEFAULT_REGIMES)
    return [r for r in REGIMES if r in wanted]


def fds_needed(args: argparse.Namespace, regimes: Sequence[str]) -> int:
    """The most descriptors one process of ours needs: a relay holds 2 per connection (each
    memory relay half the idle connections), a generator 1."""
    need = 0
    if "paced" in regimes:
        need = max(need, 2 * args.paced_conns)
    if "sparse" in regimes:
        need = max(need, 2 * max(args.sparse, default=0))
    if "memory" in regimes:
        need = max(need, args.idle)
    return need + 256


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.memory_repeat = args.memory_repeat or 1
    args.duration = args.duration or (3.0 if args.quick else 6.0)
    args.idle = args.idle or (2000 if args.quick else 10000)
    args.paced_conns = args.paced_conns or (1000 if args.quick else 5000)
    if args.rates is None:
        args.rates = [] if args.quick else [500.0, 1000.0, 4000.0, 8000.0, 16000.0]
    if args.idle > 9990 * 2:
        print("bench: --idle above 19,980 does not fit two relay processes", file=sys.stderr)
        return 2
    if max([args.paced_conns, *args.sparse]) > 8000:
        print("bench: at most 8,000 connections on one relay process", file=sys.stderr)
        return 2
    regimes = chosen_regimes(args)
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        print("bench: needs 2 cores (load on one, relay on the other)", file=sys.stderr)
        return 2
    limit = raise_fd_limit()
    if limit < fds_needed(args, regimes):
        print(
            f"bench: these regimes need {fds_needed(args, regimes):,} file descriptors per "
            f"process and the limit is {limit:,}: raise the hard limit (ulimit -Hn, "
            "LimitNOFILE, /etc/security/limits.conf) or ask for fewer connections",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CPU})  # keep this process off the relay's core
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    have_haproxy = haproxy_path() is not None and not args.no_haproxy
    started = dt.datetime.now(dt.UTC)
    fallback = choose_engine(args, regimes)
    meta = machine_info(args, have_haproxy)
    meta["engine"] = args.engine
    if fallback:
        meta["engine_fallback"] = fallback
    meta["fd_limit"] = limit
    report.header(meta)
    workdir = Path(tempfile.mkdtemp(prefix="tlstrace-bench-"))
    results: dict[str, Any] = {"meta": meta, "regimes": {}}
    ok = False
    path = args.out or RESULTS / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    try:
        with Procs(workdir) as procs:
            pki = make_pki(workdir)
            for name in regimes:
                regime = REGIMES[name]
                variants = selected(VARIANTS, name, have_haproxy)
                print(f"\n[{name}] running...", file=sys.stderr, flush=True)
                data = Bench(args, procs, workdir, pki, regime, variants).run()
                summarize(regime, data)
                results["regimes"][name] = data
                report.table(regime, args, data)
        report.verdicts(results["regimes"], have_haproxy)
        ok = True
    finally:
        results["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat()
        results["meta"]["started"] = started.isoformat()
        results["meta"]["complete"] = ok
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"\nraw results: {path}", flush=True)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    if "paced" in results["regimes"] or args.plot:
        from bench import plot

        png = args.plot or path.with_suffix(".png")
        try:
            plot.draw([results], png)
            print(f"plot: {png}", flush=True)
        except plot.PlotError as e:
            print(f"bench: no plot: {e}", file=sys.stderr)
    return 0


def choose_engine(args: argparse.Namespace, regimes: Sequence[str]) -> str | None:
    """Build the C engine when a regime that uses it runs; when it cannot be built, fall back
    to the Python engine (`args.engine`), say so loudly and return why."""
    if args.engine != "c" or not any(r in C_ENGINE_REGIMES for r in regimes):
        return None
    from bench import cengine

    try:
        path = cengine.build()
    except cengine.BuildError as e:
        args.engine = "python"
        bar = "!" * 78
        msg = (
            f"{bar}\nbench: WARNING: the C load generator cannot be built, so the "
            f"{' and '.join(C_ENGINE_REGIMES)} regimes run on the PYTHON generator, which "
            "shares the 2 cores with the relay at several times the CPU per round trip: the "
            "relay is not the bottleneck there and the figures are not comparable with "
            f"C-engine runs.\n  why: {e}\n{bar}"
        )
        print(msg, file=sys.stderr, flush=True)
        print(msg, flush=True)
        return str(e)
    print(f"bench: C load generator: {path}", file=sys.stderr, flush=True)
    return None


def stop_sink(procs: Procs, sink: Child) -> dict[str, Any]:
    if sink.popen.stdin is not None:
        with contextlib.suppress(OSError):
            sink.popen.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        sink.popen.wait(5)
    procs.stop(sink)
    lines = sink.log_tail(1)
    try:
        counts: dict[str, Any] = json.loads(lines)
    except ValueError:
        counts = {"error": lines}
    return counts


def machine_info(args: argparse.Namespace, have_haproxy: bool) -> dict[str, Any]:
    hap = haproxy_path()
    hap_version = None
    if hap and have_haproxy:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            hap_version = subprocess.run(
                [hap, "-v"], capture_output=True, timeout=10, text=True
            ).stdout.splitlines()[0]
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    from tlstrace import __version__

    return {
        "tlstrace": __version__,
        "tree": _git_tree(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "haproxy": hap_version,
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "uvloop": _uvloop_version(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def _git_tree() -> str | None:
    """The commit measured, with "+changes" when the work tree differs from it (the relay's
    code is whatever the checkout holds when the benchmark starts)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "tlstrace",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' +changes in tlstrace/' if dirty else ''}" if head else None


def _uvloop_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("uvloop")
    except ImportError:
        return None
