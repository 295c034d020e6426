"""What one ClientHello costs the relay, by the key-exchange group it offers.

    python -m bench.groups [--seconds S] [--repeat N] [--workers N] [--expensive ffdhe8192 ...]

Client threads (pinned to core 0) replay one canned TLS 1.3 ClientHello per case, made by the
stdlib with `set_ecdh_curve(group)` so it offers that group only, on a new TCP connection each
time; they wait for the relay's first answer and reset the connection. That is the attack of
issue 15 (a client never finishes the handshake) and also everything a full handshake costs
the server up to the client's Finished: for TLS 1.3 the relay derives the shared key, signs its
CertificateVerify and sends its whole flight in answer to the hello. The relay (pinned to core
1, ECDSA P-256 certificate as in `python -m bench`) runs with:

- the default groups (X25519, P-256, P-384): each is measured, and an ffdhe8192-only hello is
  refused with an alert;
- the default groups plus the `--expensive` ones: what those cost if a domain enabled them
  (OpenSSL's own default accepts ffdhe2048 to ffdhe8192);
- `handshake_rate_per_source` set so low that every connection is refused at accept.

Relay CPU is utime+stime from /proc, read at the start and end of each window, divided by the
hellos answered in it. `other load` is how busy the relay's core was with anything but the relay
(the machine is shared: contention inflates CPU per operation).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import Procs, core_busy, free_port, proc_cpu, wait_listening
from bench.targets import LOAD_CPU, RELAY_CPU, Pki, make_pki

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_GROUPS = ["X25519", "P-256", "P-384"]
#: the stdlib's set_ecdh_curve takes OpenSSL's short names
_SHORT = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class Case:
    relay: str  # "default", "expensive" or "limited"
    label: str
    group: str
    expect: str  # "ServerHello", "alert" or "refused"


@dataclass
class Outcome:
    case: Case
    hellos: int
    answers: dict[str, int]
    relay_cpu_s: float
    seconds: float
    other_load: float
    run: int = 1

    @property
    def cpu_ms(self) -> float | None:
        return self.relay_cpu_s / self.hellos * 1000 if self.hellos else None


def canned_hello(group: str) -> bytes:
    """The ClientHello OpenSSL sends offering `group` only (TLS 1.3, one key share)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ecdh_curve(_SHORT.get(group, group))
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def one_hello(port: int, hello: bytes) -> str:
    """Send `hello` on a new connection; what came back first: ServerHello, alert, refused."""
    s = socket.socket()
    try:
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):
            s.sendall(hello)
        try:
            first = s.recv(1)
        except ConnectionResetError:
            first = b""
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    finally:
        s.close()
    return {b"\x16": "ServerHello", b"\x15": "alert", b"": "refused"}.get(first, "other")


def write_config(
    path: Path,
    *,
    port: int,
    pki: Pki,
    state_dir: Path,
    groups: Sequence[str] | None = None,
    rate: float | None = None,
) -> None:
    lines = [
        "# written by bench.groups",
        'log_level = "warning"',
        'api_listen = ""',
        "backend_probe_interval = 0.0",
        "tls_handshake_timeout = 30000",
        f'state_dir = "{state_dir}"',
    ]
    if rate is not None:
        lines += [f"handshake_rate_per_source = {rate}", "handshake_rate_burst = 1"]
    lines += [
        "",
        "[[listener]]",
        f'listen = "tls:127.0.0.1:{port}"',
        f'backend = "tcp:127.0.0.1:{free_port()}"',  # never reached: no handshake ends
        "",
        "[[server_domain]]",
        'name = "default"',
        f'certificate = "{pki.cert}"',
        f'private_key = "{pki.key}"',
    ]
    if groups is not None:
        lines.append("groups = [" + ", ".join(f'"{g}"' for g in groups) + "]")
    path.write_text("\n".join(lines) + "\n")


def measure(
    case: Case, port: int, pid: int, *, workers: int, seconds: float, warmup: float
) -> Outcome:
    hello = canned_hello(case.group)
    counts: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    window = threading.Event()

    def work() -> None:
        while not stop.is_set():
            answer = one_hello(port, hello)
            if window.is_set():
                with lock:
                    counts[answer] = counts.get(answer, 0) + 1

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    cpu0, busy0, t0 = proc_cpu(pid), core_busy(), time.monotonic()
    window.set()
    time.sleep(seconds)
    window.clear()
    cpu1, busy1, t1 = proc_cpu(pid), core_busy(), time.monotonic()
    stop.set()
    for t in threads:
        t.join(60)
    core = f"cpu{RELAY_CPU}"
    relay_cpu = cpu1 - cpu0
    other = max(0.0, (busy1.get(core, 0) - busy0.get(core, 0) - relay_cpu) / (t1 - t0))
    return Outcome(case, sum(counts.values()), counts, relay_cpu, t1 - t0, other)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.groups",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="window per case (default 5)")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds before each window")
    ap.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of every case, interleaved (default 1); medians are printed",
    )
    ap.add_argument(
        "--expensive",
        nargs="*",
        default=["ffdhe8192"],
        help="groups measured on a relay that enables them (default ffdhe8192)",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = ap.parse_args(argv)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CPU})
    cases = [Case("default", "default groups", g, "ServerHello") for g in DEFAULT_GROUPS]
    cases += [Case("default", "default groups", g, "alert") for g in args.expensive]
    cases += [Case("expensive", f"+ {g} enabled", g, "ServerHello") for g in args.expensive]
    cases.append(Case("limited", "rate limit exceeded", "X25519", "refused"))
    started = dt.datetime.now(dt.UTC)
    print(
        f"One TLS 1.3 ClientHello per new connection, replayed by {args.workers} threads; "
        f"relay on core {RELAY_CPU}, ECDSA P-256 certificate; {ssl.OPENSSL_VERSION}; "
        f"{args.seconds:g} s per case; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="tlstrace-bench-groups-"))
    outcomes: list[Outcome] = []
    with Procs(workdir) as procs:
        pki = make_pki(workdir)
        relays: dict[str, tuple[int, int]] = {}
        for name, groups, rate in (
            ("default", None, None),
            ("expensive", [*DEFAULT_GROUPS, *args.expensive], None),
            ("limited", None, 0.001),
        ):
            port = free_port()
            cfg = workdir / f"{name}.toml"
            write_config(
                cfg, port=port, pki=pki, state_dir=workdir / "state", groups=groups, rate=rate
            )
            child = procs.start(
                f"tlstrace-{name}",
                [sys.executable, "-m", "tlstrace", "run", "--config", str(cfg)],
                cpus={RELAY_CPU},
            )
            wait_listening(port, [child])
            relays[name] = (port, child.pid)
        header = (
            f"{'relay':<22}{'offered':<11}{'answer':<13}{'hellos':>7}"
            f"{'relay CPU ms/hello':>20}{'x X25519':>10}{'other load':>12}"
        )
        print(f"\n{'run':<5}{header}")
        ratios: dict[int, list[float]] = {i: [] for i in range(len(cases))}
        for run in range(1, args.repeat + 1):
            base: float | None = None
            for i, case in enumerate(cases):
                port, pid = relays[case.relay]
                o = measure(
                    case, port, pid, workers=args.workers, seconds=args.seconds, warmup=args.warmup
                )
                o.run = run
                outcomes.append(o)
                wrong = sum(n for a, n in o.answers.items() if a != case.expect)
                if case.group == "X25519" and case.expect == "ServerHello":
                    base = o.cpu_ms
                ratio = o.cpu_ms / base if o.cpu_ms is not None and base else None
                if ratio is not None:
                    ratios[i].append(ratio)
                print(
                    f"{run:<5}{case.label:<22}{case.group:<11}{case.expect:<13}{o.hellos:>7}"
                    f"{_ms(o.cpu_ms):>20}{_x(ratio):>10}{o.other_load:>11.0%}"
                    + (f"   ({wrong} other answers: {o.answers})" if wrong else ""),
                    flush=True,
                )
        if args.repeat > 1:
            print(
                f"\nmedians of {args.repeat} runs (min-max); x X25519: median of each run's "
                "ratio to the X25519 case of the same run"
            )
            print(
                f"{'relay':<22}{'offered':<11}{'answer':<13}{'relay CPU ms/hello':>32}"
                f"{'x X25519':>10}"
            )
            for i, case in enumerate(cases):
                cpus = [o.cpu_ms for o in outcomes if o.case is case and o.cpu_ms is not None]
                spread = (
                    f"{_ms(statistics.median(cpus))} ({_ms(min(cpus))}-{_ms(max(cpus))})"
                    if cpus
                    else "-"
                )
                ratio = statistics.median(ratios[i]) if ratios[i] else None
                print(
                    f"{case.label:<22}{case.group:<11}{case.expect:<13}{spread:>32}{_x(ratio):>10}"
                )
    path = args.out or RESULTS / f"groups-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "started": started.isoformat(),
        "openssl": ssl.OPENSSL_VERSION,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "outcomes": [{**asdict(o), "cpu_ms_per_hello": o.cpu_ms} for o in outcomes],
    }
    path.write_text(json.dumps(data, indent=1))
    print(f"\nraw results: {path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(set(o.answers) <= {o.case.expect} for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
