"""`python -m bench` (= `make bench`): tlstrace against the same load direct and through HAProxy.

Scenarios (each `--repeat` times, interleaving the targets; medians are reported):

- persistent: 50 TLS connections, ~600-byte INVITEs answered 200 OK, 4 in flight on each;
  round trips/s, latency percentiles, and the relay's CPU per relayed message.
- handshake: 50 workers, each looping TLS 1.3 handshake (ECDSA P-256) + one OPTIONS + clean
  close (close_notify both ways); handshakes/s and the relay's CPU per new connection.
- memory: N idle TLS connections (default 10,000); resident memory per connection.

Columns: `direct` is the load generator talking plain TCP straight to the responder (no TLS,
no relay: the floor); `tlstrace`; `haproxy` (HAProxy 2.6, one thread, `mode tcp`,
`bind ... ssl crt`) when haproxy is installed. The load generator and the responder share core
0; the relay runs alone on core 1. A relay's CPU is utime+stime of its process(es) from
/proc/PID/stat, sampled by the load generator at the start and end of the measurement window.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.procs import Child, ProcessError, Procs, core_busy, open_fds, rss_kib
from bench.targets import (
    LOAD_CPU,
    SCENARIOS,
    VARIANTS,
    Pki,
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


# -- load generator runs -------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        procs: Procs,
        workdir: Path,
        pki: Pki,
        variants: Sequence[Variant],
        hep: str | None,
        side: Sequence[Child],
    ) -> None:
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.pki = pki
        self.variants = variants
        self.hep = hep
        self.side = list(side)  # other processes on the load core (the HEP sink)

    def log(self, msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    def loadgen(
        self, mode: str, target: Target, responder: Child, extra: Sequence[str] = ()
    ) -> dict[str, Any]:
        a = self.args
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            mode,
            "--target",
            target.address,
            "--warmup",
            str(a.warmup),
            "--duration",
            str(a.duration),
            *extra,
        ]
        for pid in target.pids:
            argv += ["--cpu-pid", str(pid)]
        for c in [responder, *self.side]:
            argv += ["--side-pid", str(c.pid)]
        child = self.procs.start(
            f"loadgen-{mode}-{target.variant.name}", argv, cpus={LOAD_CPU}, stdout=subprocess.PIPE
        )
        try:
            out, _ = child.popen.communicate(timeout=a.warmup + a.duration + 60)
        except subprocess.TimeoutExpired:
            raise ProcessError(
                f"load generator ({mode}, {target.variant.name}) timed out"
            ) from None
        finally:
            self.procs.stop(child)
        lines = out.decode(errors="replace").strip().splitlines()
        if child.popen.returncode != 0 or not lines:
            raise ProcessError(
                f"load generator ({mode}, {target.variant.name}) failed "
                f"(exit {child.popen.returncode}):\n{child.log_tail()}"
            )
        result: dict[str, Any] = json.loads(lines[-1])
        for c in target.children:
            if not c.alive():
                raise ProcessError(
                    f"{c.name} died during the run ({_exit_text(c)}):\n{c.log_tail()}"
                )
        return result

    # -- persistent and handshake ----------------------------------------------------------

    def rate_scenario(
        self,
        scenario: str,
        extra: Sequence[str],
        summarize: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        tag = f"-{scenario}"
        responder, rport = start_responder(self.procs, tag)
        targets: list[Target] = []
        runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in self.variants}
        errors: dict[str, list[str]] = {v.name: [] for v in self.variants}

        def start(v: Variant) -> Target | None:
            try:
                return start_target(
                    v, self.procs, self.workdir, self.pki, backend_port=rport, hep=self.hep, tag=tag
                )
            except ProcessError as e:
                errors[v.name].append(str(e))
                self.log(f"{v.name}: cannot start: {e}")
                return None

        try:
            targets = [t for t in map(start, self.variants) if t is not None]
            for rep in range(self.args.repeat):
                for i, t in enumerate(targets):
                    name = t.variant.name
                    for _attempt in range(2):  # one retry when a process was lost mid-run
                        # something else on the machine may have ended a process: restart it
                        if not responder.alive():
                            self.log(f"responder gone ({_exit_text(responder)}): restarting it")
                            self.procs.stop(responder)
                            responder, _ = start_responder(self.procs, tag, port=rport)
                        if not all(c.alive() for c in t.children):
                            self.log(f"{name} gone ({_exit_text(t.children[0])}): restarting")
                            stop_target(t, self.procs)
                            restarted = start(t.variant)
                            if restarted is None:
                                break
                            targets[i] = t = restarted
                        before = wait_quiet(self.args.quiet_wait)
                        try:
                            raw = self.loadgen(scenario, t, responder, extra)
                            if not responder.alive():
                                raise ProcessError(
                                    f"the responder died during the run ({_exit_text(responder)})"
                                )
                            _check_errors(scenario, raw)
                        except ProcessError as e:
                            errors[name].append(str(e))
                            self.log(f"{scenario} {name} run {rep + 1}: {e}")
                            continue
                        raw["busy_before_run"] = before
                        raw["rep"] = rep
                        raw.update(summarize(raw))
                        runs[name].append(raw)
                        self.log(
                            f"{scenario} {name} run {rep + 1}/{self.args.repeat}: "
                            f"{report.brief(scenario, raw)}"
                        )
                        break
        finally:
            for t in targets:
                stop_target(t, self.procs)
            self.procs.stop(responder)
        return {"runs": runs, "errors": errors}

    def persistent(self) -> dict[str, Any]:
        a = self.args
        extra = ["--conns", str(a.conns), "--inflight", str(a.inflight), "--size", str(a.size)]

        def summarize(raw: dict[str, Any]) -> dict[str, Any]:
            n = raw["round_trips"]
            cpu = raw.get("relay_cpu_s")
            return {
                "cpu_us_per_round_trip": cpu / n * 1e6 if cpu is not None and n else None,
                # a round trip is two relayed messages: the request and its response
                "cpu_us_per_msg": cpu / (2 * n) * 1e6 if cpu is not None and n else None,
                **_load_shares(raw),
            }

        return self.rate_scenario("persistent", extra, summarize)

    def handshake(self) -> dict[str, Any]:
        extra = ["--conns", str(self.args.workers)]

        def summarize(raw: dict[str, Any]) -> dict[str, Any]:
            n = raw["operations"]
            cpu = raw.get("relay_cpu_s")
            return {
                "cpu_us_per_handshake": cpu / n * 1e6 if cpu is not None and n else None,
                **_load_shares(raw),
            }

        return self.rate_scenario("handshake", extra, summarize)

    # -- memory ------------------------------------------------------------------------------

    def memory(self) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in self.variants}
        errors: dict[str, list[str]] = {v.name: [] for v in self.variants}
        for rep in range(self.args.repeat):
            for v in self.variants:
                wait_quiet(self.args.quiet_wait)
                try:
                    raw = self.memory_once(v)
                except ProcessError as e:
                    errors[v.name].append(str(e))
                    self.log(f"memory {v.name} run {rep + 1}: {e}")
                    continue
                runs[v.name].append(raw)
                self.log(
                    f"memory {v.name} run {rep + 1}/{self.args.repeat}: "
                    f"{report.brief('memory', raw)}"
                )
        return {"runs": runs, "errors": errors}

    def memory_once(self, v: Variant) -> dict[str, Any]:
        n = self.args.idle
        responder, rport = start_responder(self.procs, f"-memory-{v.name}")
        target: Target | None = None
        gen: Child | None = None
        try:
            processes = 1 if v.kind == "direct" else 2
            target = start_target(
                v,
                self.procs,
                self.workdir,
                self.pki,
                backend_port=rport,
                processes=processes,
                hep=self.hep,
                tag="-memory",
            )
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
                cpus={LOAD_CPU},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            line = _read_line(gen, timeout=max(60.0, n / 100))
            opened = json.loads(line)
            # settle: RSS unchanged (within 0.5 %) over one second, or 15 s at most
            deadline = time.monotonic() + 15
            last = sum(rss_kib(c.pid) for c in measured)
            while time.monotonic() < deadline:
                time.sleep(1.0)
                now = sum(rss_kib(c.pid) for c in measured)
                if abs(now - last) <= max(256, last * 0.005):
                    last = now
                    break
                last = now
            after = [rss_kib(c.pid) for c in measured]
            fds = [open_fds(c.pid) for c in measured]
            for c in measured:
                if not c.alive():
                    raise ProcessError(
                        f"{c.name} died holding the connections ({_exit_text(c)}):\n{c.log_tail()}"
                    )
            held = opened["held"]
            delta = sum(after) - sum(before)
            return {
                "wanted": n,
                "held": held,
                "errors": opened["errors"],
                "error_samples": opened["error_samples"],
                "open_s": opened["open_s"],
                "processes": len(measured),
                "measured": "responder" if v.kind == "direct" else v.name,
                "rss_before_kib": before,
                "rss_after_kib": after,
                "fds": fds,
                "kib_per_conn": delta / held if held else None,
            }
        finally:
            if gen is not None:
                self.procs.stop(gen)
            if target is not None:
                stop_target(target, self.procs)
            self.procs.stop(responder)


def _check_errors(scenario: str, raw: dict[str, Any]) -> None:
    """A run that lost connections measured something else: count it as failed."""
    errs = raw.get("errors", 0)
    if scenario == "persistent" and errs:
        raise ProcessError(f"{errs} connection(s) lost during the run: {raw.get('error_samples')}")
    if scenario == "handshake" and errs > max(5, raw.get("operations", 0) // 100):
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
    """The first line the child prints, within `timeout` seconds."""
    out = child.popen.stdout
    assert out is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = out.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProcessError(f"{child.name} printed nothing within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ProcessError(f"{child.name} exited:\n{child.log_tail()}")
            buf += chunk
        elif not child.alive():
            raise ProcessError(f"{child.name} exited:\n{child.log_tail()}")
    return buf.split(b"\n", 1)[0].decode()


def _load_shares(raw: dict[str, Any]) -> dict[str, Any]:
    """How busy the relay's core was, and how much CPU went to processes that are not ours."""
    w = raw["window_s"]
    busy = raw.get("core_busy_s") or {}
    relay = raw.get("relay_cpu_s") or 0.0
    ours = relay + raw.get("loadgen_cpu_s", 0.0) + (raw.get("side_cpu_s") or 0.0)
    return {
        "relay_core_pct": relay / w * 100 if raw.get("relay_cpu_s") is not None else None,
        "load_core_pct": (raw.get("loadgen_cpu_s", 0.0) + (raw.get("side_cpu_s") or 0.0)) / w * 100,
        # busy time of both cores not spent in the relay, load generator or responder
        "other_pct": max(0.0, sum(busy.values()) - ours) / w * 100 if busy else None,
    }


# -- summary -------------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(scenario: str, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-metric medians over the runs of each variant."""
    out: dict[str, dict[str, Any]] = {}
    for name, runs in data["runs"].items():
        if not runs:
            out[name] = {"runs": 0}
            continue
        s: dict[str, Any] = {"runs": len(runs)}
        if scenario == "memory":
            for key in ("kib_per_conn", "held", "errors", "open_s"):
                s[key] = median([r[key] for r in runs])
            s["rss_before_kib"] = median([sum(r["rss_before_kib"]) for r in runs])
            s["rss_after_kib"] = median([sum(r["rss_after_kib"]) for r in runs])
            s["processes"] = runs[-1]["processes"]
            s["fds"] = runs[-1]["fds"]
            s["measured"] = runs[-1]["measured"]
        else:
            keys = [
                "rate",
                "cpu_us_per_msg",
                "cpu_us_per_round_trip",
                "cpu_us_per_handshake",
                "relay_core_pct",
                "load_core_pct",
                "other_pct",
                "errors",
            ]
            for key in keys:
                if key in runs[0]:
                    s[key] = median([r.get(key) for r in runs])
            for q in ("p50", "p99", "p99.9"):
                s[q] = median([r["latency_ms"][q] for r in runs])
            key = "cpu_us_per_msg" if scenario == "persistent" else "cpu_us_per_handshake"
            cpus = [r[key] for r in runs if r.get(key) is not None]
            if cpus:
                s["cpu_range"] = [min(cpus), max(cpus)]
            # per repetition, to pair with the run of another target made right before/after
            s["cpu_by_rep"] = {str(r["rep"]): r.get(key) for r in runs}
        out[name] = s
    return out


# -- main ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all three)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short windows (3 s), one repetition, 2,000 idle connections unless --idle is given",
    )
    p.add_argument("--repeat", type=int, default=None, help="runs per target (default 3)")
    p.add_argument(
        "--duration", type=float, default=None, help="measurement window in seconds (default 10)"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    p.add_argument(
        "--idle",
        type=int,
        default=None,
        help="idle TLS connections in the memory scenario (default 10000)",
    )
    p.add_argument("--conns", type=int, default=50, help="persistent connections")
    p.add_argument("--inflight", type=int, default=4, help="requests in flight per connection")
    p.add_argument("--size", type=int, default=600, help="INVITE size in bytes")
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
    return p


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.idle = args.idle or (2000 if args.quick else 10000)
    if args.idle > 9990 * 2:
        print("bench: --idle above 19,980 does not fit two relay processes", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if s in (args.scenario or SCENARIOS)]
    if len(os.sched_getaffinity(0)) < 2 and (os.cpu_count() or 1) < 2:
        print("bench: needs 2 cores (load on one, relay on the other)", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CPU})  # keep this process off the relay's core
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    have_haproxy = haproxy_path() is not None and not args.no_haproxy
    started = dt.datetime.now(dt.UTC)
    meta = machine_info(args, have_haproxy)
    report.header(meta)
    workdir = Path(tempfile.mkdtemp(prefix="tlstrace-bench-"))
    results: dict[str, Any] = {"meta": meta, "scenarios": {}}
    ok = False
    try:
        with Procs(workdir) as procs:
            pki = make_pki(workdir)
            all_variants = [v for s in scenarios for v in selected(VARIANTS, s, have_haproxy)]
            hep: str | None = None
            side: list[Child] = []
            sink: Child | None = None
            if any(v.needs_hep for v in all_variants):
                sink, hep = start_sink(procs)
                side.append(sink)
            for scenario in scenarios:
                variants = selected(VARIANTS, scenario, have_haproxy)
                bench = Bench(args, procs, workdir, pki, variants, hep, side)
                print(f"\n[{scenario}] running...", file=sys.stderr, flush=True)
                data = getattr(bench, scenario)()
                data["summary"] = summarize(scenario, data)
                results["scenarios"][scenario] = data
                report.table(scenario, args, data["summary"], data["errors"])
            if sink is not None:
                results["hep_sink"] = stop_sink(procs, sink)
                report.sink(results["hep_sink"])
        report.verdicts(results["scenarios"], have_haproxy)
        ok = True
    finally:
        results["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat()
        results["meta"]["started"] = started.isoformat()
        results["meta"]["complete"] = ok
        path = args.out or RESULTS / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(f"\nraw results: {path}", flush=True)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    return 0


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
