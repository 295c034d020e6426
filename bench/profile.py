"""Where tlstrace's CPU goes under the benchmark's load.

    python -m bench.profile persistent --py-spy /path/to/py-spy [--perf] [--seconds 10]
    python -m bench.profile handshake  --py-spy /path/to/py-spy

Starts the responder (core 0) and one tlstrace (core 1) as the benchmark does, drives the
scenario's load from core 0, and samples the relay with py-spy (Python functions; time spent in
C code is charged to the Python line that called it) and, with --perf, with `perf record`
(split by shared object: interpreter, kernel, OpenSSL, uvloop). Prints the top functions by
own time and by inclusive time, as percentages of the relay's busy samples.
py-spy is not a project dependency: install it anywhere (`pip install --target DIR py-spy`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.procs import Procs
from bench.targets import LOAD_CPU, VARIANTS, make_pki, start_responder, start_target


def summarize_raw(path: Path, top: int) -> str:
    """Top functions of a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        names = [_short(f) for f in frames]
        own[names[-1]] += n
        lines[frames[-1].replace(str(Path.cwd()) + "/", "")] += n
        for name in set(names):
            incl[name] += n
    if not total:
        return "no samples"
    out = [f"{total} samples (busy only)", "", "own time (C calls charged to the caller):"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in own.most_common(top)]
    out += ["", "inclusive (below the event loop):"]
    below = [(k, v) for k, v in incl.most_common() if v < total * 0.9][:top]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in below]
    out += ["", "hottest lines:"]
    out += [f"  {100 * v / total:5.1f}%  {k}" for k, v in lines.most_common(top)]
    return "\n".join(out)


def _short(frame: str) -> str:
    func, _, where = frame.partition(" (")
    file = where.split(":")[0].rsplit("/", 1)[-1]
    return f"{func} ({file})" if file else func


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", choices=["persistent", "handshake"])
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    p.add_argument("--perf", action="store_true", help="also `perf record` the relay")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    if not args.py_spy and not args.perf:
        p.error("no py-spy found: give --py-spy PATH, or --perf")
    tlstrace = next(v for v in VARIANTS if v.kind == "tlstrace")
    workdir = Path(tempfile.mkdtemp(prefix="tlstrace-profile-"))
    with Procs(workdir) as procs:
        pki = make_pki(workdir)
        _responder, rport = start_responder(procs)
        target = start_target(tlstrace, procs, workdir, pki, backend_port=rport)
        pid = target.pids[0]
        gen_argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            args.scenario,
            "--target",
            target.address,
            "--warmup",
            "2",
            "--duration",
            str(args.seconds + 2),
            "--cpu-pid",
            str(pid),
        ]
        gen = procs.start("loadgen", gen_argv, cpus={LOAD_CPU}, stdout=subprocess.PIPE)
        time.sleep(3)
        raw = workdir / "pyspy.raw"
        perf_data = workdir / "perf.data"
        samplers = []
        if args.py_spy:
            samplers.append(
                procs.start(
                    "py-spy",
                    [
                        args.py_spy,
                        "record",
                        "--nonblocking",
                        "-r",
                        str(args.rate),
                        "-d",
                        str(int(args.seconds)),
                        "-p",
                        str(pid),
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                    ],
                    cpus={LOAD_CPU},
                )
            )
        if args.perf:
            samplers.append(
                procs.start(
                    "perf",
                    [
                        "perf",
                        "record",
                        "-F",
                        "499",
                        "-g",
                        "-p",
                        str(pid),
                        "-o",
                        str(perf_data),
                        "--",
                        "sleep",
                        str(args.seconds),
                    ],
                    cpus={LOAD_CPU},
                )
            )
        for s in samplers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.popen.wait(args.seconds + 30)
        out, _ = gen.popen.communicate(timeout=args.seconds + 60)
        result = json.loads(out.decode().strip().splitlines()[-1])
        ops = result.get("round_trips") or result.get("operations") or 0
        print(
            f"load: {result['rate']:,.0f}/s; relay CPU "
            f"{result['relay_cpu_s'] / max(ops, 1) * 1e6:.1f} us per "
            f"{'round trip' if args.scenario == 'persistent' else 'handshake'} "
            f"(with the samplers attached)\n"
        )
        if args.py_spy and raw.exists():
            print("py-spy:")
            print(summarize_raw(raw, args.top))
        if args.perf and perf_data.exists():
            rep = subprocess.run(
                [
                    "perf",
                    "report",
                    "-i",
                    str(perf_data),
                    "--no-children",
                    "--sort",
                    "dso",
                    "--stdio",
                    "-g",
                    "none",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            print("\nperf, by shared object:")
            print(
                "\n".join(
                    ln for ln in rep.stdout.splitlines() if "%" in ln and not ln.startswith("#")
                )
            )
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
