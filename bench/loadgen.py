"""The benchmark's load generator: one process, uvloop, TLS driven by hand.

    python -m bench.loadgen persistent --target tls:127.0.0.1:5061 --conns 50 --inflight 4 ...
    python -m bench.loadgen paced      --target tls:127.0.0.1:5061 --conns 5000 --rate 2000 ...
    python -m bench.loadgen handshake  --target tls:127.0.0.1:5061 --conns 50 ...
    python -m bench.loadgen idle       --target tls:127.0.0.1:5061 --conns 10000

TLS runs on `ssl.SSLObject` over memory BIOs inside a plain `asyncio.Protocol`, not asyncio's
TLS transport: per message that is one `SSLObject.write` (one TLS record) and one
`transport.write` (one send), several times cheaper than streams over asyncio's SSL protocol,
so the generator, not the relay under test, stays the cheap side. `tcp:` targets run the same
load over plain TCP (the direct baseline). `wss:` targets (and `ws:`, without TLS) upgrade each
connection to WebSocket first (an HTTP/1.1 Upgrade offering the `sip` subprotocol), then send
each request as one masked text frame and read each answer from an unmasked text frame
(`bench/ws_client.py`).

`persistent` is a closed loop (each answer sends the next request); `paced` an open loop: requests
leave on a schedule (`--rate` per second in total, round-robin over the connections) whether
or not answers came back, latency counted from the scheduled time, one window per `--rate`.
With `--sync` (both), the process opens its connections, prints `{"ready": N}` and waits for a
line on standard input holding the wall-clock time (`time.time()`) at which to start: several
generator processes then share one measurement window.

`persistent`, `paced` and `handshake` print one JSON object on stdout when done. The relay's CPU
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
import math
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from bench.procs import core_busy, proc_cpu
from bench.ws_client import FrameReader, WsClient, WsError, upgrade_request, upgrade_response

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


def client_for(scheme: str) -> tuple[ssl.SSLContext | None, WsClient | None]:
    """What a target's scheme asks of the client: TLS (`tls:`, `wss:`), WebSocket (`wss:`,
    `ws:`), both or neither (`tcp:`)."""
    ctx = client_context() if scheme in ("tls", "wss") else None
    return ctx, WsClient() if scheme in ("wss", "ws") else None


class Link(asyncio.Protocol):
    """One client connection, TLS (on memory BIOs) or plain, and over that WebSocket when `ws`
    is given (the Upgrade first, then each message one text frame each way); subclasses get
    `plain_received` (SIP bytes: the frames' payloads) and `on_open` once all of that is done."""

    transport: asyncio.Transport

    def __init__(self, ctx: ssl.SSLContext | None, ws: WsClient | None = None) -> None:
        self.ctx = ctx
        self.ws = ws
        #: where decrypted (or plain) bytes go: the subclass, or the WebSocket layer first
        self._received: Callable[[bytes], None] = (
            self.plain_received if ws is None else self._ws_received
        )
        #: the Upgrade's answer while it arrives (None: not upgrading)
        self._upgrade_buf: bytes | None = None
        self._frames = FrameReader()
        self.obj: ssl.SSLObject | None = None
        self.inc = self.out = cast(ssl.MemoryBIO, None)
        self.open = False
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        #: True once open (handshake done), False when lost before that
        self.opened: asyncio.Future[bool] = loop.create_future()
        self.failed: str | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.ctx is None:
            self._now_open()
            return
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = self.ctx.wrap_bio(self.inc, self.out, server_side=False)
        self._handshake()

    def data_received(self, data: bytes) -> None:
        obj = self.obj
        if obj is None:
            self._received(data)
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
            self._received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.opened.done():
            self.opened.set_result(False)
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
        self._now_open()

    def _now_open(self) -> None:
        """TCP (and TLS) established: ready, or the WebSocket Upgrade first."""
        self.open = True
        if self.ws is not None:
            peer = self.transport.get_extra_info("peername")
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            self._upgrade_buf = b""
            self._write(upgrade_request(f"{host}:{peer[1]}"))
            return
        self._ready()

    def _ready(self) -> None:
        if not self.opened.done():
            self.opened.set_result(True)
        self.on_open()

    def _ws_received(self, data: bytes) -> None:
        ws = self.ws
        assert ws is not None
        try:
            if self._upgrade_buf is not None:
                buf = self._upgrade_buf + data
                used = upgrade_response(buf)
                if not used:
                    self._upgrade_buf = buf
                    return
                self._upgrade_buf = None
                data = buf[used:]
                self._ready()
                if not data:
                    return
            texts, pings = self._frames.feed(data)
        except WsError as e:
            self.fail(f"WebSocket: {e}")
            return
        for p in pings:
            self._write(ws.pong(p))
        if texts:
            self.plain_received(texts[0] if len(texts) == 1 else b"".join(texts))

    def _ignore(self, data: bytes) -> None:
        pass

    def _flush(self) -> None:
        data = self.out.read()
        if data:
            self.transport.write(data)

    def send(self, msg: bytes) -> None:
        """One message: one text frame over WebSocket, one TLS record, one write."""
        if self.transport.is_closing():
            return  # the connection was lost: counted at the end of the run
        ws = self.ws
        if ws is not None:
            msg = ws.text(msg)
        obj = self.obj
        if obj is None:
            self.transport.write(msg)
        else:
            obj.write(msg)
            self.transport.write(self.out.read())

    def _write(self, data: bytes) -> None:
        """Bytes as they are (through TLS when there is TLS)."""
        if self.obj is None:
            self.transport.write(data)
        else:
            self.obj.write(data)
            self._flush()

    def close_clean(self) -> None:
        """A WebSocket close frame (when upgraded), close_notify (TLS) and FIN; the peer's close
        ends the connection (see `lost`)."""
        if self.transport.is_closing():
            return
        if self.ws is not None and self.open and self._upgrade_buf is None:
            self._received = self._ignore  # the relay's close frame answers ours
            self._write(self.ws.close())
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
    if scheme not in ("tls", "tcp", "wss", "ws") or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected tls:, tcp:, wss: or ws: then HOST:PORT"
        )
    return scheme, host.strip("[]"), int(port)


# -- measurement windows -------------------------------------------------------------------------


class Meter:
    """Samples, at a window's two ends, the relay's CPU (`--cpu-pid`), this process's, the side
    processes' (`--side-pid`) and every core's busy time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        #: processes whose CPU counts as this generator's own (the C engine's program)
        self.own_pids: list[int] = []

    def sample(self) -> tuple[dict[str, float], float, float, float, float]:
        a = self.args
        return (
            core_busy(),
            cpu_sample(a.cpu_pid),
            self_cpu() + cpu_sample(self.own_pids),
            cpu_sample(a.side_pid),
            time.perf_counter(),
        )

    def window(
        self,
        a: tuple[dict[str, float], float, float, float, float],
        b: tuple[dict[str, float], float, float, float, float],
    ) -> dict[str, Any]:
        return {
            "window_s": b[4] - a[4],
            "relay_cpu_s": b[1] - a[1] if self.args.cpu_pid else None,
            "loadgen_cpu_s": b[2] - a[2],
            "side_cpu_s": b[3] - a[3] if self.args.side_pid else None,
            "core_busy_s": busy_delta(a[0], b[0]),
        }


def histogram(latencies: Sequence[float]) -> dict[str, int]:
    """Latencies (seconds) in log buckets 2 % wide, keyed by the bucket's index: several
    generator processes' histograms add up, and `hist_percentiles` reads them."""
    out: dict[str, int] = {}
    log = math.log
    for x in latencies:
        k = str(int(log(max(x, 1e-7) * 1e7) * 50))
        out[k] = out.get(k, 0) + 1
    return out


def hist_percentiles(hist: dict[str, int]) -> dict[str, float | None]:
    """p50/p99/p99.9/max in ms from `histogram` buckets (each bucket's upper bound)."""
    keys = sorted(int(k) for k in hist)
    total = sum(hist.values())

    def at(q: float) -> float | None:
        if not total:
            return None
        want = min(total, int(q * total) + 1)
        seen = 0
        for k in keys:
            seen += hist[str(k)]
            if seen >= want:
                return math.exp((k + 1) / 50) / 1e7 * 1000
        return None

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999), "max": at(1.0)}


async def open_links(
    factory: Callable[[], Link], host: str, port: int, n: int, parallel: int
) -> tuple[list[Link], list[str]]:
    """`n` connections, at most `parallel` handshakes at a time; each is open (handshake done)
    when this returns, or counted in the errors."""
    loop = asyncio.get_running_loop()
    links: list[Link] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            try:
                async with asyncio.timeout(30):
                    _, link = await loop.create_connection(factory, host, port)
                    links.append(link)
                    if not await link.opened:
                        raise ConnectionError(link.failed or "closed before the handshake ended")
            except (OSError, TimeoutError, ConnectionError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(one() for _ in range(n)))
    return links, errors


async def start_time(args: argparse.Namespace, ready: int) -> float:
    """When to start sending, on the perf_counter clock: now, or with `--sync` the wall-clock
    time the parent writes on standard input once every generator process is ready."""
    if not args.sync:
        return time.perf_counter()
    print(json.dumps({"ready": ready}), flush=True)
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()
    buf = b""

    def on_stdin() -> None:
        nonlocal buf
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        buf += data
        if (b"\n" in buf or not data) and not got.done():
            got.set_result(buf)

    loop.add_reader(0, on_stdin)
    try:
        line = await got
    finally:
        loop.remove_reader(0)
    if not line.strip():
        raise SystemExit("bench.loadgen: standard input closed before the start time")
    wall = float(line.split()[0])
    return time.perf_counter() + max(0.0, wall - time.time())


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.perf_counter()))


def requests_for(args: argparse.Namespace) -> list[bytes]:
    base = args.index << 24  # distinct Call-IDs in each generator process
    if args.method == "INVITE":
        return [invite(base + i, args.size) for i in range(1024)]
    return [options(base + i) for i in range(1024)]


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
    def __init__(
        self, ctx: ssl.SSLContext | None, run: Persistent, ws: WsClient | None = None
    ) -> None:
        super().__init__(ctx, ws)
        self.run = run
        self.times: collections.deque[float] = collections.deque()
        self.buf = b""

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


async def close_all(links: Sequence[Link]) -> None:
    for link in links:
        link.close_clean()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(link.lost for link in links)), 3)
    for link in links:
        link.transport.abort()


async def persistent(args: argparse.Namespace) -> dict[str, Any]:
    scheme, host, port = args.target
    ctx, ws = client_for(scheme)
    reqs = requests_for(args)
    run = Persistent(reqs, args.inflight)
    links_, open_errors = await open_links(
        lambda: PersistentLink(ctx, run, ws), host, port, args.conns, args.parallel
    )
    links = cast(list[PersistentLink], links_)
    if open_errors:
        for link in links:
            link.transport.abort()
        raise SystemExit(
            f"bench.loadgen: {len(open_errors)} connection(s) failed to open: {open_errors[:3]}"
        )
    meter = Meter(args)
    t_start = await start_time(args, len(links))
    await sleep_until(t_start)
    for link in links:
        link.start()
    await sleep_until(t_start + args.warmup)
    i0, sent0 = len(run.latencies), run.sent
    a = meter.sample()
    await sleep_until(t_start + args.warmup + args.duration)
    b = meter.sample()
    i1 = len(run.latencies)
    run.stopping = True
    window = sorted(run.latencies[i0:i1])
    failed = [link.failed for link in links if link.failed]
    # a failed link aborts its transport and is lost too: count each link once
    errors = sum(1 for link in links if link.failed or link.lost.done())
    await close_all(links)
    w = meter.window(a, b)
    return {
        "mode": "persistent",
        "engine": "python",
        "target": f"{scheme}:{host}:{port}",
        "conns": args.conns,
        "inflight": args.inflight,
        "message_size": len(reqs[0]),
        **w,
        "round_trips": len(window),
        "sent_in_window": run.sent - sent0,
        "rate": len(window) / w["window_s"],
        "latency_ms": percentiles(window),
        "latency_hist": histogram(window),
        "bad_responses": run.bad,
        "errors": errors,
        "error_samples": failed[:3],
    }


# -- paced (open loop) -------------------------------------------------------------------------


@dataclass
class Paced:
    latencies: list[float] = field(default_factory=list)
    bad: int = 0


class PacedLink(Link):
    """Sends when told (`send_at`), records each answer's latency from its scheduled time."""

    def __init__(self, ctx: ssl.SSLContext | None, run: Paced, ws: WsClient | None = None) -> None:
        super().__init__(ctx, ws)
        self.run = run
        self.times: collections.deque[float] = collections.deque()
        self.buf = b""

    def send_at(self, msg: bytes, scheduled: float) -> None:
        self.times.append(scheduled)
        self.send(msg)

    def plain_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = buf.count(_END)
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


async def paced(args: argparse.Namespace) -> dict[str, Any]:
    """Open loop: for each `--rate` in turn, `warmup` then a `duration` window, requests sent on
    a schedule (rate per second over all connections, round-robin), answered or not."""
    scheme, host, port = args.target
    ctx, ws = client_for(scheme)
    reqs = requests_for(args)
    run = Paced()
    links_, open_errors = await open_links(
        lambda: PacedLink(ctx, run, ws), host, port, args.conns, args.parallel
    )
    links = cast(list[PacedLink], links_)
    if open_errors:
        for link in links:
            link.transport.abort()
        raise SystemExit(
            f"bench.loadgen: {len(open_errors)} connection(s) failed to open: {open_errors[:3]}"
        )
    meter = Meter(args)
    t = await start_time(args, len(links))
    n_links, n_reqs = len(links), len(reqs)
    sent = 0
    windows = []
    for rate in args.rate:
        # the schedule: request k of this rate leaves at t + k / rate
        t_rate, k = t, 0
        w_start, w_end = t + args.warmup, t + args.warmup + args.duration
        a: tuple[dict[str, float], float, float, float, float] | None = None
        i0 = sent0 = 0
        await sleep_until(t_rate)
        while True:
            now = time.perf_counter()
            if a is None and now >= w_start:
                i0, sent0, a = len(run.latencies), sent, meter.sample()
            if now >= w_end:
                break
            due = int((now - t_rate) * rate)
            while k < due:
                link = links[sent % n_links]
                link.send_at(reqs[sent % n_reqs], t_rate + k / rate)
                k += 1
                sent += 1
            await asyncio.sleep(0.001)
        b = meter.sample()
        assert a is not None
        i1 = len(run.latencies)
        lat = sorted(run.latencies[i0:i1])
        w = meter.window(a, b)
        windows.append(
            {
                "offered_rate": rate,
                **w,
                "round_trips": len(lat),
                "sent_in_window": sent - sent0,
                "rate": len(lat) / w["window_s"],
                "latency_ms": percentiles(lat),
                "latency_hist": histogram(lat),
                # connections lost so far (from the start of the run to this window's end)
                "errors": sum(1 for link in links if link.failed or link.lost.done()),
            }
        )
        t = w_end
    failed = [link.failed for link in links if link.failed]
    errors = sum(1 for link in links if link.failed or link.lost.done())
    # let what is in flight come back (a rate above what the relay takes leaves a queue)
    deadline = time.perf_counter() + 5
    while any(link.times for link in links) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    unanswered = sum(len(link.times) for link in links)
    await close_all(links)
    return {
        "mode": "paced",
        "target": f"{scheme}:{host}:{port}",
        "conns": args.conns,
        "message_size": len(reqs[0]),
        "windows": windows,
        "sent": sent,
        "unanswered": unanswered,
        "bad_responses": run.bad,
        "errors": errors,
        "error_samples": failed[:3],
    }


# -- new connections ---------------------------------------------------------------------------


class OneShotLink(Link):
    """Handshake, one OPTIONS, wait for its answer (`answered`), then the caller closes."""

    def __init__(self, ctx: ssl.SSLContext | None, msg: bytes, ws: WsClient | None = None) -> None:
        super().__init__(ctx, ws)
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
    run: Churn,
    ctx: ssl.SSLContext | None,
    ws: WsClient | None,
    host: str,
    port: int,
    wid: int,
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
                    functools.partial(OneShotLink, ctx, msg, ws), host, port
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
    ctx, ws = client_for(scheme)
    run = Churn()
    workers = [
        asyncio.create_task(churn_worker(run, ctx, ws, host, port, w)) for w in range(args.conns)
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


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open `conns` connections (handshake each), report, hold them until stdin closes; each
    line read meanwhile is answered with the count of those still open."""
    scheme, host, port = args.target
    loop = asyncio.get_running_loop()
    ctx, ws = client_for(scheme)
    t0 = time.perf_counter()
    links, errors = await open_links(lambda: Link(ctx, ws), host, port, args.conns, args.parallel)
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
        if not data:
            if not stdin_closed.done():
                stdin_closed.set_result(None)
            return
        for _ in range(data.count(b"\n")):
            still = sum(1 for link in links if not link.lost.done())
            print(json.dumps({"still_open": still}), flush=True)

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
    p.add_argument("mode", choices=["persistent", "paced", "handshake", "idle"])
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
    p.add_argument(
        "--parallel", type=int, default=100, help="handshakes at once while connections open"
    )
    p.add_argument(
        "--rate",
        type=float,
        action="append",
        default=[],
        help="paced: requests/s over all connections (repeatable: one window each, in order)",
    )
    p.add_argument(
        "--sync",
        action="store_true",
        help='persistent, paced: once connected, print {"ready": N} and start at the wall-clock '
        "time read from standard input",
    )
    p.add_argument(
        "--index", type=int, default=0, help="this generator's number (distinct Call-IDs)"
    )
    p.add_argument(
        "--engine",
        choices=["python", "c"],
        default="python",
        help="persistent against tls: or tcp: targets: 'c' runs the closed loop in C "
        "(bench/cgen/loadgen.c, built on demand; bench/cengine.py), the same requests and "
        "results at a fraction of the CPU",
    )
    p.add_argument(
        "--send",
        choices=["batch", "each"],
        default="each",
        help="--engine c: one send() per request ('each', the default, as the Python engine "
        "does), or the requests that one read's answers call for (one TLS record each) in one "
        "send() ('batch')",
    )
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

    if args.mode == "paced" and not args.rate:
        print("bench.loadgen: paced needs --rate", file=sys.stderr)
        return 2
    if args.engine == "c":
        if args.mode != "persistent" or args.target[0] not in ("tls", "tcp"):
            print(
                "bench.loadgen: --engine c runs persistent against tls: and tcp: targets only",
                file=sys.stderr,
            )
            return 2
        from bench import cengine

        result = cengine.persistent(args, requests_for(args), Meter(args))
        print(json.dumps(result), flush=True)
        return 0
    fn = {"persistent": persistent, "paced": paced, "handshake": handshake, "idle": idle}[args.mode]
    result = uvloop.run(fn(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
