"""Soak: thousands of TLS connections held on a running tlstrace for minutes, with CRLF
keep-alives and a steady request rate; the relay's memory and fds must stay flat, and no
message may be lost: every one counted by the clients, the backend and the relay alike.

    python -m bench.soak --connections 5000 --minutes 10        # the figures in the docs
    python -m bench.soak                                         # a quick run (500, 1 min)

It starts, all on loopback:

- a backend that answers every request with 200 OK (`tlstrace.responder.respond`) and counts
  what it receives and answers, and the CRLF keep-alives the relay passes on;
- `tlstrace run` with one TLS listener in front of it (tcp_max_connections above the load);
- `--procs` load processes: each opens its share of the connections (TLS on memory BIOs,
  at most 100 handshakes at a time), then sends its share of `--rate` requests a second,
  round-robin over its connections, and a CRLFCRLF ping on every connection each
  `--keepalive` seconds. Every answer must be the 200 to the oldest request waiting on its
  connection (same Call-ID); every ping must get its CRLF pong.

Every `--sample` seconds it prints the relay's resident memory (VmRSS), open fds, open
connections and relayed messages. At the end the load stops, everything in flight drains, and
the counts are compared: requests sent = received by the backend = answered by it = answers
received by the clients = `tlstrace_sip_messages_total` from and to the clients, pings sent =
pongs received = `tlstrace_keepalives_total{kind="ping"}` = CRLFs reaching the backend. RSS and
fds are "flat" when, between the first sample after the ramp-up and the last one, RSS grew by
less than 5 % (or 8 MiB) and the fd count did not change. Exit status 0 when all of it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from bench.procs import free_port, open_fds, rss_kib
from tlstrace.responder import respond
from tlstrace.sip.framing import Dropped, FramingError, KeepAlive, Message, SipFramer

MiB = 1024 * 1024

# -- children ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(args: list[str], log: Path | None = None) -> subprocess.Popen[str]:
    """A child in its own session, killed if we die; with `log`, its output goes there."""
    out: IO[str] | int = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115
    return subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.STDOUT if log else None,
        text=True,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )


def read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line a child prints."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {proc.args!r} exited ({proc.poll()})")
        if line.startswith("{"):
            return cast(dict[str, Any], json.loads(line))
    raise TimeoutError(f"no answer from {proc.args!r}")


def tell(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


def stop(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines from our stdin (the coordinator's commands); "" at end of file."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def readable() -> None:
        line = sys.stdin.readline()
        queue.put_nowait(line.strip() if line else "")
        if not line:
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), readable)
    return queue


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# -- the backend -------------------------------------------------------------------------------


@dataclass
class BackendCounts:
    connections: int = 0
    received: int = 0
    answered: int = 0
    keepalive_crlfs: int = 0
    framing_errors: int = 0


class CountingResponder(asyncio.Protocol):
    def __init__(self, counts: BackendCounts) -> None:
        self.counts = counts
        self.framer = SipFramer(
            max_msg_size=1 << 20, pingpong=False, crlf_drop=True, max_chunks=None
        )
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.counts.connections += 1

    def data_received(self, data: bytes) -> None:
        counts = self.counts
        answers = []
        for ev in self.framer.feed(data):
            if ev.__class__ is Message:
                counts.received += 1
                answer = respond(ev.data)
                if answer is not None:
                    answers.append(answer)
                    counts.answered += 1
            elif isinstance(ev, Dropped):
                counts.keepalive_crlfs += ev.size // 2
            elif isinstance(ev, FramingError):
                counts.framing_errors += 1
        if answers and self.transport is not None:
            self.transport.write(b"".join(answers))


async def backend_main(port: int) -> None:
    loop = asyncio.get_running_loop()
    counts = BackendCounts()
    server = await loop.create_server(
        lambda: CountingResponder(counts), "127.0.0.1", port, backlog=8192
    )
    emit({"listening": port})
    commands = stdin_lines(loop)
    while (word := await commands.get()) != "":
        if word == "report":
            emit(asdict(counts))
    server.close()


# -- the load ------------------------------------------------------------------------------------


def sip_request(call_id: str, cseq: int) -> bytes:
    return (
        f"OPTIONS sip:soak@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bK-{call_id}-{cseq};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:soak@127.0.0.1>;tag=s{cseq}\r\n"
        f"To: <sip:soak@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass
class LoadCounts:
    connected: int = 0
    connect_failures: int = 0
    sent: int = 0
    answered: int = 0
    wrong_answers: int = 0
    pings: int = 0
    pongs: int = 0
    closed_by_relay: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class SoakClient(asyncio.Protocol):
    def __init__(self, gen: LoadGen, index: int) -> None:
        self.gen = gen
        self.index = index
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = gen.ctx.wrap_bio(self.inc, self.out)
        self.framer = SipFramer(max_msg_size=1 << 20, pingpong=False, max_chunks=None)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.open = False
        self.waiting: collections.deque[str] = collections.deque()
        self.cseq = 0
        self.pings_waiting = 0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._handshake()

    def _handshake(self) -> None:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as e:
            self._fail(f"handshake: {e}")
            return
        self._flush()
        self.open = True
        if not self.ready.done():
            self.ready.set_result(True)

    def _flush(self) -> None:
        data = self.out.read()
        if data and self.transport is not None:
            self.transport.write(data)

    def _fail(self, why: str) -> None:
        self.gen.counts.error(f"conn {self.index}: {why}")
        if not self.ready.done():
            self.ready.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.inc.write(data)
        if not self.open:
            self._handshake()
            if not self.open:
                return
        chunks = []
        try:
            while self.inc.pending:
                chunk = self.obj.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            self._fail(f"read: {e}")
            return
        counts = self.gen.counts
        for chunk in chunks:
            for ev in self.framer.feed(chunk):
                if isinstance(ev, Message):
                    expected = self.waiting.popleft() if self.waiting else None
                    if (
                        expected is not None
                        and ev.data.startswith(b"SIP/2.0 200 ")
                        and f"Call-ID: {expected}\r\n".encode() in ev.data
                    ):
                        counts.answered += 1
                    else:
                        counts.wrong_answers += 1
                        counts.error(f"conn {self.index}: unexpected {ev.data[:60]!r}")
                elif isinstance(ev, KeepAlive):
                    pongs = ev.data.count(b"\r\n")
                    counts.pongs += pongs
                    self.pings_waiting -= pongs
                else:
                    counts.error(f"conn {self.index}: {ev}")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.closing:
            self.gen.counts.closed_by_relay += 1
            self.gen.counts.error(f"conn {self.index}: closed by the relay ({exc})")

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def request(self) -> None:
        self.cseq += 1
        call_id = f"soak-{self.gen.ident}-{self.index}-{self.cseq}"
        self.waiting.append(call_id)
        self.send(sip_request(call_id, self.cseq))
        self.gen.counts.sent += 1

    def ping(self) -> None:
        self.pings_waiting += 1
        self.send(b"\r\n\r\n")
        self.gen.counts.pings += 1

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and self.open:
            with contextlib.suppress(ssl.SSLError):
                self.obj.unwrap()
            self._flush()
            self.transport.close()


class LoadGen:
    def __init__(
        self, ident: int, port: int, connections: int, rate: float, keepalive: float
    ) -> None:
        self.ident = ident
        self.port = port
        self.n = connections
        self.rate = rate
        self.keepalive = keepalive
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.counts = LoadCounts()
        self.clients: list[SoakClient] = []

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            async with limit:
                client = SoakClient(self, i)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda: client, "127.0.0.1", self.port), 30
                    )
                    ok = await asyncio.wait_for(client.ready, 30)
                except (OSError, TimeoutError) as e:
                    ok = False
                    self.counts.error(f"connect {i}: {e!r}")
                if ok:
                    self.clients.append(client)
                    self.counts.connected += 1
                else:
                    self.counts.connect_failures += 1

        await asyncio.gather(*(one(i) for i in range(self.n)))

    async def run(self, seconds: float) -> None:
        live = [c for c in self.clients if c.open]
        if not live:
            return
        start = time.monotonic()
        req_i = ping_i = 0
        requests_done = pings_done = 0
        ping_rate = len(live) / self.keepalive
        while (now := time.monotonic()) - start < seconds:
            elapsed = now - start
            for _ in range(int(elapsed * self.rate) - requests_done):
                c = live[req_i % len(live)]
                req_i += 1
                requests_done += 1
                if c.open:
                    c.request()
            for _ in range(int(elapsed * ping_rate) - pings_done):
                c = live[ping_i % len(live)]
                ping_i += 1
                pings_done += 1
                if c.open:
                    c.ping()
            await asyncio.sleep(0.02)

    async def drain(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(not c.waiting and c.pings_waiting <= 0 for c in self.clients if c.open):
                return
            await asyncio.sleep(0.1)


async def load_main(ident: int, port: int, connections: int, rate: float, keepalive: float) -> None:
    loop = asyncio.get_running_loop()
    commands = stdin_lines(loop)
    gen = LoadGen(ident, port, connections, rate, keepalive)
    await gen.connect_all()
    emit({"connected": gen.counts.connected, "failed": gen.counts.connect_failures})
    word = await commands.get()  # "go SECONDS"
    seconds = float(word.split()[1])
    await gen.run(seconds)
    await gen.drain()
    emit(asdict(gen.counts))
    await commands.get()  # "close"
    for c in gen.clients:
        c.close()
    await asyncio.sleep(1)
    emit({"closed": len(gen.clients)})


# -- the relay ---------------------------------------------------------------------------------


def relay_sample(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, open fds) of a process."""
    return rss_kib(pid), open_fds(pid)


def scrape(api: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{api}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def relay_config(workdir: Path, listen: int, backend: int, api: int, connections: int) -> Path:
    path = workdir / "tlstrace.toml"
    path.write_text(
        f'state_dir = "{workdir / "state"}"\n'
        f'api_listen = "127.0.0.1:{api}"\n'
        f"tcp_max_connections = {connections + 1000}\n"
        f"tls_handshake_timeout = 20000\n"
        f'log_level = "info"\n'
        f"\n[[listener]]\n"
        f'listen = "tls:127.0.0.1:{listen}"\n'
        f'backend = "tcp:127.0.0.1:{backend}"\n'
    )
    return path


# -- the coordinator ---------------------------------------------------------------------------


def coordinate(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tlstrace-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, "-m", "bench.soak"]
    backend_port, listen, api = free_port(), free_port(), free_port()
    children: list[subprocess.Popen[str]] = []
    print(
        f"soak: {args.connections} TLS connections, {args.rate:g} requests/s, a ping per "
        f"connection every {args.keepalive:g} s, {args.minutes:g} min; "
        f"{args.procs} load process(es); work dir {workdir}",
        flush=True,
    )
    try:
        backend = spawn([*me, "--role", "backend", "--port", str(backend_port)])
        children.append(backend)
        read_json(backend, 20)
        config = relay_config(workdir, listen, backend_port, api, args.connections)
        relay = spawn(
            [sys.executable, "-m", "tlstrace", "run", "--config", str(config)],
            log=workdir / "tlstrace.log",
        )
        children.append(relay)
        wait_port(listen)
        wait_port(api)
        rss0, fds0 = relay_sample(relay.pid)
        print(f"relay pid {relay.pid}: at rest {rss0 / 1024:.1f} MiB RSS, {fds0} fds", flush=True)

        shares = [
            args.connections // args.procs + (i < args.connections % args.procs)
            for i in range(args.procs)
        ]
        loads = []
        ramp_started = time.monotonic()
        for i, n in enumerate(shares):
            p = spawn(
                [
                    *me,
                    "--role",
                    "load",
                    "--id",
                    str(i),
                    "--port",
                    str(listen),
                    "--connections",
                    str(n),
                    "--rate",
                    str(args.rate * n / args.connections),
                    "--keepalive",
                    str(args.keepalive),
                ]
            )
            children.append(p)
            loads.append(p)
        ramp = [read_json(p, 600) for p in loads]
        connected = sum(r["connected"] for r in ramp)
        print(
            f"ramp-up: {connected} of {args.connections} connected in "
            f"{time.monotonic() - ramp_started:.1f} s "
            f"({sum(r['failed'] for r in ramp)} failed)",
            flush=True,
        )
        before = scrape(f"127.0.0.1:{api}")
        seconds = args.minutes * 60
        for p in loads:
            tell(p, f"go {seconds}")
        started = time.monotonic()
        samples: list[tuple[float, int, int]] = []
        print(
            f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>6} {'open':>6} {'from clients':>13} "
            f"{'to clients':>11} {'pings':>8}",
            flush=True,
        )
        while (elapsed := time.monotonic() - started) < seconds:
            rss, fds = relay_sample(relay.pid)
            samples.append((elapsed, rss, fds))
            m = scrape(f"127.0.0.1:{api}")
            print(
                f"{elapsed:7.0f} {rss / 1024:8.1f} {fds:6d} "
                f"{metric(m, 'tlstrace_connections_open', direction='inbound'):6.0f} "
                f"{metric(m, 'tlstrace_sip_messages_total', direction='from_client'):13.0f} "
                f"{metric(m, 'tlstrace_sip_messages_total', direction='to_client'):11.0f} "
                f"{metric(m, 'tlstrace_keepalives_total', kind='ping'):8.0f}",
                flush=True,
            )
            time.sleep(min(args.sample, max(0.1, seconds - elapsed)))
        results = [read_json(p, 120) for p in loads]
        after = scrape(f"127.0.0.1:{api}")
        rss_end, fds_end = relay_sample(relay.pid)
        samples.append((time.monotonic() - started, rss_end, fds_end))
        tell(backend, "report")
        back = read_json(backend, 20)
        for p in loads:
            tell(p, "close")
        for p in loads:
            read_json(p, 60)
        time.sleep(2)
        rss_closed, fds_closed = relay_sample(relay.pid)
        log_text = (workdir / "tlstrace.log").read_text(errors="replace")
    finally:
        for p in reversed(children):
            stop(p)

    def delta(name: str, **labels: str) -> int:
        return round(metric(after, name, **labels) - metric(before, name, **labels))

    sent = sum(r["sent"] for r in results)
    answered = sum(r["answered"] for r in results)
    pings = sum(r["pings"] for r in results)
    pongs = sum(r["pongs"] for r in results)
    wrong = sum(r["wrong_answers"] for r in results)
    closed_by_relay = sum(r["closed_by_relay"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    relay_in = delta("tlstrace_sip_messages_total", direction="from_client")
    relay_out = delta("tlstrace_sip_messages_total", direction="to_client")
    relay_pings = delta("tlstrace_keepalives_total", kind="ping")
    handshake_failures = round(metric(after, "tlstrace_handshake_failures_total"))
    dropped = round(metric(after, "tlstrace_messages_dropped_total"))

    steady = [s for s in samples if s[0] >= min(30.0, seconds / 4)] or samples
    rss_first, rss_last = steady[0][1], steady[-1][1]
    rss_max = max(s[1] for s in samples)
    fds_first, fds_last = steady[0][2], steady[-1][2]
    fds_max = max(s[2] for s in samples)
    rss_flat = rss_last - rss_first <= max(0.05 * rss_first, 8 * 1024)
    fds_flat = abs(fds_last - fds_first) <= 2  # an API scrape may hold one for a moment

    print()
    print(
        f"connections     : {connected} open for {seconds / 60:g} min "
        f"(closed by the relay: {closed_by_relay})"
    )
    print(
        f"requests        : clients sent {sent}, backend received {back['received']}, "
        f"backend answered {back['answered']}, clients got {answered} "
        f"(wrong answers {wrong}, lost {sent - answered})"
    )
    print(
        f"relay counted   : {relay_in} from clients, {relay_out} to clients; "
        f"dropped {dropped}, handshake failures {handshake_failures}"
    )
    print(
        f"keep-alives     : clients sent {pings} pings, got {pongs} pongs; relay counted "
        f"{relay_pings}; backend got {back['keepalive_crlfs']} CRLFs"
    )
    print(
        f"relay RSS (MiB) : at rest {rss0 / 1024:.1f}, first {rss_first / 1024:.1f}, last "
        f"{rss_last / 1024:.1f}, max {rss_max / 1024:.1f}, after close "
        f"{rss_closed / 1024:.1f}  -> {'flat' if rss_flat else 'GROWING'}"
    )
    print(
        f"relay fds       : at rest {fds0}, first {fds_first}, last {fds_last}, max {fds_max}, "
        f"after close {fds_closed}  -> {'flat' if fds_flat else 'CHANGING'}"
    )
    for e in errors[:10]:
        print(f"  error: {e}")
    if "Traceback" in log_text:
        print("  the relay's log has a Traceback")
    ok = (
        connected == args.connections
        and closed_by_relay == 0
        and not errors
        and sent == back["received"] == back["answered"] == answered == relay_in == relay_out
        and pings == pongs == relay_pings == back["keepalive_crlfs"]
        and dropped == 0
        and handshake_failures == 0
        and rss_flat
        and fds_flat
        and fds_closed <= fds0
        and "Traceback" not in log_text
    )
    print(f"result          : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--connections", type=int, default=500)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=1000.0, help="requests a second, in all")
    p.add_argument(
        "--keepalive", type=float, default=30.0, help="seconds between two pings on a connection"
    )
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--procs", type=int, default=2, help="load processes")
    p.add_argument("--workdir", help="where the relay's config and log go (default: a temp dir)")
    p.add_argument(
        "--role",
        choices=["coordinator", "backend", "load"],
        default="coordinator",
        help=argparse.SUPPRESS,
    )
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--id", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "coordinator":
        return coordinate(args)
    import uvloop

    if args.role == "backend":
        uvloop.run(backend_main(args.port))
    else:
        uvloop.run(load_main(args.id, args.port, args.connections, args.rate, args.keepalive))
    return 0


if __name__ == "__main__":
    sys.exit(main())
