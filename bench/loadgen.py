"""The benchmark's load generator: one process, uvloop, TLS driven by hand.

    python -m bench.loadgen persistent --target tls:127.0.0.1:5061 --conns 50 --inflight 4 ...
    python -m bench.loadgen handshake  --target tls:127.0.0.1:5061 --conns 50 ...
    python -m bench.loadgen idle       --target tls:127.0.0.1:5061 --conns 10000

TLS runs on `ssl.SSLObject` over memory BIOs inside a plain `asyncio.Protocol`, not asyncio's
TLS transport: per message that is one `SSLObject.write` (one TLS record) and one
`transport.write` (one send), several times cheaper than streams over asyncio's SSL protocol,
so the generator, not the relay under test, stays the cheap side. `tcp:` targets run the same
load over plain TCP (the direct baseline).

`persistent` and `handshake` print one JSON object on stdout when done. The relay's CPU
(utime+stime from /proc/PID/stat of every `--cpu-pid`) is sampled here, at the exact start and
end of the measurement window, and so is this process's own CPU and that of each `--side-pid`
(the responder, which shares this process's core). `idle` prints a JSON line once every
connection is open, then holds them until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from bench.procs import core_busy, proc_cpu

_END = b"\r\n\r\n"
_OK = b"SIP/2.0 200 "


# -- requests ----------------------------------------------------------------------------------


def invite(i: int, size: int = 600) -> bytes:
    """A distinct INVITE with an SDP body, padded so the whole message is `size` bytes."""
    sdp = (
        "v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\n"
        "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )

    def build(body: str) -> bytes:
        return (
            f"INVITE sip:bob@bench.invalid SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bK-{i:08x};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f'From: "Alice" <sip:alice@bench.invalid>;tag={i:08x}a\r\n'
            f"To: <sip:bob@bench.invalid>\r\n"
            f"Call-ID: {i:08x}-bench@127.0.0.1\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:alice@127.0.0.1:5099;transport=tls>\r\n"
            f"Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()

    msg = build(sdp)
    if len(msg) < size:
        pad = size - len(msg) - len("a=x:\r\n")
        msg = build(sdp + "a=x:" + "x" * max(pad, 0) + "\r\n")
    return msg


def options(i: int) -> bytes:
    return (
        f"OPTIONS sip:bench.invalid SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bK-o{i:08x}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:bench@bench.invalid>;tag=o{i:08x}\r\n"
        f"To: <sip:bench.invalid>\r\n"
        f"Call-ID: o{i:08x}@127.0.0.1\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


# -- CPU accounting ----------------------------------------------------------------------------


def cpu_sample(pids: Sequence[int]) -> float:
    return sum(proc_cpu(p) for p in pids)


def busy_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in b if k in a}


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- TLS ---------------------------------------------------------------------------------------


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only, no verification (the relay's cost is measured, not the client's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


class Link(asyncio.Protocol):
    """One client connection, TLS (on memory BIOs) or plain; subclasses get `plain_received`."""

    transport: asyncio.Transport

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        self.ctx = ctx
        self.obj: ssl.SSLObject | None = None
        self.inc = self.out = cast(ssl.MemoryBIO, None)
        self.open = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failed: str | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.ctx is None:
            self.open = True
            self.on_open()
            return
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = self.ctx.wrap_bio(self.inc, self.out, server_side=False)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        obj = self.obj
        if obj is None:
            self.plain_received(data)
            return
        self.inc.write(data)
        if not self.open:
            self._handshake()
            if not self.open:
                return
        chunks = []
        inc = self.inc
        try:
            # read only while undecrypted bytes remain: a read that ends in SSLWantReadError
            # costs about half of decrypting a 600-byte record (OpenSSL error-string lookups)
            while inc.pending:
                chunk = obj.read(65536)
                if not chunk:  # close_notify
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            self.fail(f"TLS read: {e}")
            return
        if chunks:
            self.plain_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost(exc)

    # helpers

    def _handshake(self) -> None:
        obj = self.obj
        assert obj is not None
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as e:
            self._flush()
            self.fail(f"TLS handshake: {e}")
            return
        self._flush()
        self.open = True
        self.on_open()

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.transport.write(data)

    def send(self, msg: bytes) -> None:
        """One message: one TLS record, one write."""
        if self.transport.is_closing():
            return  # the connection was lost: counted at the end of the run
        obj = self.obj
        if obj is None:
            self.transport.write(msg)
        else:
            obj.write(msg)
            self.transport.write(self.out.read())

    def close_clean(self) -> None:
        """close_notify (TLS) and FIN; the peer's close ends the connection (see `lost`)."""
        if self.transport.is_closing():
            return
        if self.obj is not None and self.open:
            with contextlib.suppress(ssl.SSLError):
                self.obj.unwrap()  # SSLWantReadError: ours is out, theirs is not needed
            self._flush()
        self.open = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
        self.transport.abort()

    # for subclasses

    def on_open(self) -> None:
        pass

    def plain_received(self, data: bytes) -> None:
        pass

    def on_lost(self, exc: Exception | None) -> None:
        pass


def parse_target(text: str) -> tuple[str, str, int]:
    scheme, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tls", "tcp") or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected tls:HOST:PORT or tcp:HOST:PORT")
    return scheme, host.strip("[]"), int(port)


# -- persistent --------------------------------------------------------------------------------


@dataclass
class Persistent:
    requests: list[bytes]
    inflight: int
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    bad: int = 0
    stopping: bool = False


class PersistentLink(Link):
    def __init__(self, ctx: ssl.SSLContext | None, run: Persistent, ready: Callable[[], None]):
        super().__init__(ctx)
        self.run = run
        self.ready = ready
        self.times: collections.deque[float] = collections.deque()
        self.buf = b""

    def on_open(self) -> None:
        self.ready()

    def start(self) -> None:
        for _ in range(self.run.inflight):
            self._send_one()

    def _send_one(self) -> None:
        run = self.run
        reqs = run.requests
        msg = reqs[run.sent % len(reqs)]
        run.sent += 1
        self.times.append(time.perf_counter())
        self.send(msg)

    def plain_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = buf.count(_END)  # the responder's answers have no body
        if not n:
            self.buf = buf
            return
        last = buf.rfind(_END) + 4
        self.buf = buf[last:]
        run = self.run
        if buf.count(_OK, 0, last) != n:
            run.bad += n - buf.count(_OK, 0, last)
        now = time.perf_counter()
        pop = self.times.popleft
        lat = run.latencies
        for _ in range(n):
            lat.append(now - pop())
        if not run.stopping:
            for _ in range(n):
                self._send_one()


async def persistent(args: argparse.Namespace) -> dict[str, Any]:
    scheme, host, port = args.target
    loop = asyncio.get_running_loop()
    ctx = client_context() if scheme == "tls" else None
    size = args.size
    reqs = (
        [invite(i, size) for i in range(1024)]
        if args.method == "INVITE"
        else [options(i) for i in range(1024)]
    )
    run = Persistent(reqs, args.inflight)
    ready = asyncio.Event()
    n_ready = 0

    def one_ready() -> None:
        nonlocal n_ready
        n_ready += 1
        if n_ready == args.conns:
            ready.set()

    links: list[PersistentLink] = []
    for _ in range(args.conns):
        _, link = await loop.create_connection(
            lambda: PersistentLink(ctx, run, one_ready), host, port
        )
        links.append(link)
    await asyncio.wait_for(ready.wait(), 30)
    for link in links:
        link.start()
    await asyncio.sleep(args.warmup)
    i0, sent0 = len(run.latencies), run.sent
    b0, c0, s0, side0, t0 = (
        core_busy(),
        cpu_sample(args.cpu_pid),
        self_cpu(),
        cpu_sample(args.side_pid),
        time.perf_counter(),
    )
    await asyncio.sleep(args.duration)
    b1, c1, s1, side1, t1 = (
        core_busy(),
        cpu_sample(args.cpu_pid),
        self_cpu(),
        cpu_sample(args.side_pid),
        time.perf_counter(),
    )
    i1 = len(run.latencies)
    run.stopping = True
    window = sorted(run.latencies[i0:i1])
    failed = [link.failed for link in links if link.failed]
    # a failed link aborts its transport and is lost too: count each link once
    errors = sum(1 for link in links if link.failed or link.lost.done())
    for link in links:
        link.close_clean()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(link.lost for link in links)), 3)
    for link in links:
        link.transport.abort()
    return {
        "mode": "persistent",
        "target": f"{scheme}:{host}:{port}",
        "conns": args.conns,
        "inflight": args.inflight,
        "message_size": len(reqs[0]),
        "window_s": t1 - t0,
        "round_trips": len(window),
        "sent_in_window": run.sent - sent0,
        "rate": len(window) / (t1 - t0),
        "latency_ms": percentiles(window),
        "relay_cpu_s": c1 - c0 if args.cpu_pid else None,
        "loadgen_cpu_s": s1 - s0,
        "side_cpu_s": side1 - side0 if args.side_pid else None,
        "core_busy_s": busy_delta(b0, b1),
        "bad_responses": run.bad,
        "errors": errors,
        "error_samples": failed[:3],
    }


# -- new connections ---------------------------------------------------------------------------


class OneShotLink(Link):
    """Handshake, one OPTIONS, wait for its answer (`answered`), then the caller closes."""

    def __init__(self, ctx: ssl.SSLContext | None, msg: bytes) -> None:
        super().__init__(ctx)
        self.msg = msg
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = b""

    def on_open(self) -> None:
        self.send(self.msg)

    def plain_received(self, data: bytes) -> None:
        self.buf += data
        if _END in self.buf and not self.answered.done():
            if self.buf.startswith(_OK):
                self.answered.set_result(None)
            else:
                self.answered.set_exception(RuntimeError(f"answer {self.buf[:40]!r}"))

    def on_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(self.failed or exc or "closed"))


@dataclass
class Churn:
    latencies: list[float] = field(default_factory=list)
    measuring: bool = False
    stopping: bool = False
    done: int = 0
    errors: int = 0
    unclean: int = 0  # the peer did not close within the grace time after our close_notify
    error_samples: list[str] = field(default_factory=list)


async def churn_worker(
    run: Churn, ctx: ssl.SSLContext | None, host: str, port: int, wid: int
) -> None:
    loop = asyncio.get_running_loop()
    i = wid << 20
    while not run.stopping:
        i += 1
        msg = options(i)
        t = time.perf_counter()
        link: OneShotLink | None = None
        try:
            async with asyncio.timeout(10):
                _, link = await loop.create_connection(
                    functools.partial(OneShotLink, ctx, msg), host, port
                )
                await link.answered
        except (OSError, TimeoutError, RuntimeError, ConnectionError) as e:
            run.errors += 1
            if len(run.error_samples) < 3:
                run.error_samples.append(f"{type(e).__name__}: {e}")
            if link is not None:
                link.transport.abort()
            await asyncio.sleep(0.01)
            continue
        done = time.perf_counter()
        if run.measuring:
            run.latencies.append(done - t)
        run.done += 1
        link.close_clean()
        try:
            async with asyncio.timeout(2):
                await link.lost
        except TimeoutError:
            run.unclean += 1
            link.transport.abort()


async def handshake(args: argparse.Namespace) -> dict[str, Any]:
    scheme, host, port = args.target
    ctx = client_context() if scheme == "tls" else None
    run = Churn()
    workers = [
        asyncio.create_task(churn_worker(run, ctx, host, port, w)) for w in range(args.conns)
    ]
    await asyncio.sleep(args.warmup)
    run.measuring = True
    done0, err0, unclean0 = run.done, run.errors, run.unclean
    b0, c0, s0, side0, t0 = (
        core_busy(),
        cpu_sample(args.cpu_pid),
        self_cpu(),
        cpu_sample(args.side_pid),
        time.perf_counter(),
    )
    await asyncio.sleep(args.duration)
    b1, c1, s1, side1, t1 = (
        core_busy(),
        cpu_sample(args.cpu_pid),
        self_cpu(),
        cpu_sample(args.side_pid),
        time.perf_counter(),
    )
    run.measuring = False
    # the window's counts, not the drain's that follows
    done, errors, unclean = run.done - done0, run.errors - err0, run.unclean - unclean0
    run.stopping = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 15)
    return {
        "mode": "handshake",
        "target": f"{scheme}:{host}:{port}",
        "workers": args.conns,
        "window_s": t1 - t0,
        "operations": done,
        "rate": done / (t1 - t0),
        "latency_ms": percentiles(sorted(run.latencies)),
        "relay_cpu_s": c1 - c0 if args.cpu_pid else None,
        "loadgen_cpu_s": s1 - s0,
        "side_cpu_s": side1 - side0 if args.side_pid else None,
        "core_busy_s": busy_delta(b0, b1),
        "errors": errors,
        "unclean_closes": unclean,
        "error_samples": run.error_samples,
    }


# -- idle connections --------------------------------------------------------------------------


class HeldLink(Link):
    """Opens (handshake) and then only reads, until aborted."""

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        super().__init__(ctx)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def on_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(self.failed or "closed"))


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open `conns` connections (handshake each), report, hold them until stdin closes."""
    scheme, host, port = args.target
    loop = asyncio.get_running_loop()
    ctx = client_context() if scheme == "tls" else None
    links: list[Link] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(args.parallel)
    t0 = time.perf_counter()

    async def open_one() -> None:
        async with sem:
            try:
                async with asyncio.timeout(20):
                    _, link = await loop.create_connection(lambda: HeldLink(ctx), host, port)
                    links.append(link)
                    await link.opened
            except (OSError, TimeoutError, ConnectionError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(open_one() for _ in range(args.conns)))
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(0.5)  # let post-handshake messages (session tickets) arrive
    held = sum(1 for link in links if not link.lost.done())
    print(
        json.dumps(
            {
                "mode": "idle",
                "target": f"{scheme}:{host}:{port}",
                "wanted": args.conns,
                "held": held,
                "errors": len(errors),
                "error_samples": errors[:3],
                "open_s": elapsed,
            }
        ),
        flush=True,
    )
    stdin_closed = loop.create_future()

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(0, on_stdin)
    await stdin_closed
    still = sum(1 for link in links if not link.lost.done())
    for link in links:
        link.transport.abort()
    return {"mode": "idle_end", "still_open": still}


# -- main --------------------------------------------------------------------------------------


def percentiles(sorted_s: list[float]) -> dict[str, float | None]:
    def at(q: float) -> float | None:
        if not sorted_s:
            return None
        return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999), "max": at(1.0)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("mode", choices=["persistent", "handshake", "idle"])
    p.add_argument(
        "--target", type=parse_target, required=True, metavar="tls:HOST:PORT|tcp:HOST:PORT"
    )
    p.add_argument(
        "--conns",
        type=int,
        default=50,
        help="connections (persistent, idle) or workers (handshake)",
    )
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--method", choices=["INVITE", "OPTIONS"], default="INVITE")
    p.add_argument("--size", type=int, default=600, help="INVITE size in bytes")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--parallel", type=int, default=100, help="idle: handshakes at once")
    p.add_argument(
        "--cpu-pid",
        type=int,
        action="append",
        default=[],
        help="relay process whose CPU is measured (repeatable)",
    )
    p.add_argument(
        "--side-pid",
        type=int,
        action="append",
        default=[],
        help="other process on this core whose CPU is reported (repeatable)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvloop

    fn = {"persistent": persistent, "handshake": handshake, "idle": idle}[args.mode]
    result = uvloop.run(fn(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
