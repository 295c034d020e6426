"""The load generator's C engine: `python -m bench.loadgen persistent --engine c`.

`bench/cgen/loadgen.c` (OpenSSL on memory BIOs, epoll, non-blocking sockets) runs the closed
loop of `bench.loadgen persistent` for `tls:` and `tcp:` targets: the same request bytes (built
here by `requests_for` and handed over in a file), one TLS record and one `send` per request,
answers counted at each blank line and checked to be 200 OK, latency from each request's send to
the read that completed its answer. It costs a fraction of the Python engine's CPU per round
trip, so that on a 2-core machine the relay, not the generator, is the bottleneck.

`build()` compiles it on demand (`gcc -O2 ... -lssl -lcrypto -lm`) into a cache directory
(`$TLSTRACE_BENCH_CACHE`, else `$XDG_CACHE_HOME/tlstrace-bench`, else
`~/.cache/tlstrace-bench`), keyed by a hash of the source and the command: nothing built is
committed. `persistent(args)` keeps the Python side of the contract: the command line, `--sync`
(`{"ready": N}`, then the start time read from standard input), the CPU samples from /proc at
the window's two ends (taken when the C program says the window starts and ends) and the final
JSON object, with the same keys as the Python engine's and `"engine": "c"`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Protocol

SOURCE = Path(__file__).resolve().parent / "cgen" / "loadgen.c"
CFLAGS = ("-O2", "-Wall", "-Wextra")
LIBS = ("-lssl", "-lcrypto", "-lm")


class BuildError(RuntimeError):
    """The C engine cannot be built here (no compiler, no OpenSSL headers, ...)."""


def cache_dir() -> Path:
    env = os.environ.get("TLSTRACE_BENCH_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "tlstrace-bench"


def _compiler() -> str:
    cc = os.environ.get("CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise BuildError(f"no C compiler ({cc!r} not found; apt-get install gcc)")
    return path


def binary_path() -> Path:
    """Where the build of the current source goes (it may not exist yet)."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((*CFLAGS, *LIBS)).encode()).hexdigest()[:16]
    return cache_dir() / f"loadgen-c-{key}"


def build() -> Path:
    """The compiled engine, built now unless a build of this very source is cached."""
    try:
        out = binary_path()
    except OSError as e:
        raise BuildError(f"cannot read {SOURCE}: {e}") from None
    if out.is_file() and os.access(out, os.X_OK):
        return out
    cc = _compiler()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
        os.close(fd)
    except OSError as e:
        raise BuildError(f"cannot write to {out.parent}: {e}") from None
    try:
        r = subprocess.run(
            [cc, *CFLAGS, "-o", tmp, str(SOURCE), *LIBS],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            hint = (
                " (the OpenSSL headers are missing: apt-get install libssl-dev)"
                if "openssl/" in r.stderr
                else ""
            )
            raise BuildError(f"{cc} failed{hint}:\n{r.stderr.strip()[-2000:]}")
        os.replace(tmp, out)  # atomic: generator processes may build at the same time
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"cannot run {cc}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def write_requests(reqs: list[bytes], f: IO[bytes]) -> None:
    """The requests file the C program reads: a count, then each length and its bytes."""
    f.write(struct.pack("=I", len(reqs)))
    for r in reqs:
        f.write(struct.pack("=I", len(r)))
        f.write(r)


def _line(proc: subprocess.Popen[bytes], what: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line:
        proc.wait()
        raise SystemExit(
            f"bench.loadgen: the C engine exited (status {proc.returncode}) before {what}"
        )
    return line


def _expect(proc: subprocess.Popen[bytes], want: str) -> None:
    line = _line(proc, f"'{want}'")
    if line != want:
        raise SystemExit(f"bench.loadgen: the C engine said {line!r}, not {want!r}")


class Meter(Protocol):
    """`bench.loadgen.Meter`: CPU and clock samples at a window's two ends; `own_pids` are
    processes counted as the generator's own CPU (here: the C program)."""

    own_pids: list[int]

    def sample(self) -> Any: ...

    def window(self, a: Any, b: Any) -> dict[str, Any]: ...


def persistent(args: argparse.Namespace, reqs: list[bytes], meter: Meter) -> dict[str, Any]:
    """`bench.loadgen persistent` on the C engine: the same result keys as the Python one."""
    scheme, host, port = args.target
    if scheme not in ("tls", "tcp"):
        raise SystemExit(f"bench.loadgen: the C engine drives tls: and tcp: targets, not {scheme}:")
    try:
        exe = build()
    except BuildError as e:
        raise SystemExit(f"bench.loadgen: cannot build the C engine: {e}") from None
    fd, req_file = tempfile.mkstemp(prefix="tlstrace-loadgen-", suffix=".req")
    try:
        with os.fdopen(fd, "wb") as f:
            write_requests(reqs, f)
        argv = [
            str(exe),
            scheme,
            host,
            str(port),
            str(args.conns),
            str(args.inflight),
            repr(float(args.warmup)),
            repr(float(args.duration)),
            str(args.parallel),
            req_file,
            args.send,
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            ready = _line(proc, "its connections were open")
            os.unlink(req_file)  # read by now
            counts, w = _drive(args, proc, meter, ready)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(req_file)
    return {
        "mode": "persistent",
        "engine": "c",
        "send": args.send,
        "target": f"{scheme}:{host}:{port}",
        "conns": args.conns,
        "inflight": args.inflight,
        "message_size": len(reqs[0]),
        **w,
        "round_trips": counts["round_trips"],
        "sent_in_window": counts["sent_in_window"],
        "rate": counts["round_trips"] / w["window_s"],
        "latency_ms": counts["latency_ms"],
        "latency_hist": counts["latency_hist"],
        "bad_responses": counts["bad_responses"],
        "errors": counts["errors"],
        "error_samples": counts["error_samples"],
    }


def _drive(
    args: argparse.Namespace, proc: subprocess.Popen[bytes], meter: Meter, ready: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run once the C program printed its first line: the start (`--sync`), the window's
    samples when it says the window opens and closes, its counts."""
    assert proc.stdin is not None
    if not ready.startswith("ready "):
        raise SystemExit(f"bench.loadgen: the C engine said {ready!r}")
    delay = 0.0
    if args.sync:
        print(json.dumps({"ready": int(ready.split()[1])}), flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            raise SystemExit("bench.loadgen: standard input closed before the start time")
        delay = max(0.0, float(line.split()[0]) - time.time())
    proc.stdin.write(f"start {delay:.6f}\n".encode())
    proc.stdin.flush()
    meter.own_pids = [proc.pid]
    _expect(proc, "window start")
    a = meter.sample()
    _expect(proc, "window end")
    b = meter.sample()
    counts: dict[str, Any] = json.loads(_line(proc, "its results"))
    proc.wait()
    return counts, meter.window(a, b)
