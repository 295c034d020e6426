"""What tracing one SIP message costs the relay: encode, and encode + enqueue on a `HepSender`,
against collectors that are live, down, or accept TCP and never read.

    python -m bench.hep_cost [--packets N] [--loop uvloop|asyncio]

The caller's synchronous work is timed (timestamp, encode, `send`), in batches of 100
packets; between batches the event loop runs, as it does between SIP messages in the relay.
The table gives µs per packet (mean, median and 99th percentile of the batches), the loop's
whole time per packet (the sender's own writes and syscalls included), and the sender's
counters, so the drops are visible next to the cost. Collectors that read run in a
separate process; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hep.codec import HepPacket, PacketTemplate, encode
from hep.destination import HepDestination
from hep.sender import HepSender, SenderStats

BATCH = 100
CALL_ID = b"a84b4c76e66710@pc33.atlanta.example.com"
PAYLOAD = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: " + CALL_ID + b"\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sips:alice@pc33.atlanta.example.com;transport=tls>\r\n"
    b"User-Agent: tlstrace-bench/1.0\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 142\r\n\r\n"
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
TEMPLATE = PacketTemplate(
    src_ip="192.0.2.101",
    dst_ip="192.0.2.5",
    src_port=49152,
    dst_port=5061,
    ip_proto=6,
    capture_id=2001,
    node_name=b"tlstrace-1",
)

READER = r"""
import socket, sys
kind, port = sys.argv[1], int(sys.argv[2])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", port)); print("ready", flush=True)
    while True:
        s.recv(65536)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port)); l.listen(4); print("ready", flush=True)
while True:
    c, _ = l.accept()
    while c.recv(1 << 20):
        pass
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def reader(kind: str) -> Iterator[int]:
    """A collector in another process that reads and discards everything."""
    port = free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, kind, str(port)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def deaf_listener() -> Iterator[int]:
    """The kernel accepts connections; nobody reads."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield int(s.getsockname()[1])


@contextlib.contextmanager
def nothing() -> Iterator[int]:
    yield free_port(socket.SOCK_STREAM)


@contextlib.contextmanager
def nothing_udp() -> Iterator[int]:
    yield free_port(socket.SOCK_DGRAM)


def per_packet_us(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter_ns() - t0)
    return best / n / 1000


def bench_encode(n: int) -> list[tuple[str, float]]:
    def full() -> bytes:
        return encode(
            HepPacket(
                src_ip="192.0.2.101",
                dst_ip="192.0.2.5",
                src_port=49152,
                dst_port=5061,
                ts_sec=1700000000,
                ts_usec=123456,
                ip_proto=6,
                capture_id=2001,
                node_name=b"tlstrace-1",
                correlation_id=CALL_ID,
                payload=PAYLOAD,
            )
        )

    def template() -> bytes:
        return TEMPLATE.encode(1700000000, 123456, PAYLOAD, CALL_ID)

    def template_now() -> bytes:
        sec, usec = divmod(time.time_ns() // 1000, 1_000_000)
        return TEMPLATE.encode(sec, usec, PAYLOAD, CALL_ID)

    assert full() == template()
    return [
        ("HepPacket(...) + encode()", per_packet_us(full, n // 10)),
        ("template.encode()", per_packet_us(template, n)),
        ("clock + template.encode()", per_packet_us(template_now, n)),
    ]


@dataclass
class Result:
    name: str
    mean: float
    p50: float
    p99: float
    total: float
    stats: SenderStats


async def bench_send(name: str, dest: HepDestination, n: int, wait: bool) -> Result:
    sender = HepSender(dest, backoff_initial=0.5, backoff_max=5.0)
    await sender.start()
    if wait:
        assert await sender.wait_connected(5), sender.stats
    send = sender.send
    encode_ = TEMPLATE.encode
    samples: list[float] = []
    start = 0
    for i in range(n // BATCH + 10):
        if i == 10:
            start = time.perf_counter_ns()
        t0 = time.perf_counter_ns()
        for _ in range(BATCH):
            sec, usec = divmod(time.time_ns() // 1000, 1_000_000)
            send(encode_(sec, usec, PAYLOAD, CALL_ID))
        dt = time.perf_counter_ns() - t0
        if i >= 10:  # warm-up
            samples.append(dt / BATCH / 1000)
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # the last flush/write
    total = (time.perf_counter_ns() - start) / (len(samples) * BATCH) / 1000
    stats = sender.stats
    await sender.aclose(timeout=0.5)
    samples.sort()
    return Result(
        name,
        statistics.fmean(samples),
        samples[len(samples) // 2],
        samples[int(len(samples) * 0.99)],
        total,
        stats,
    )


async def bench_all(n: int) -> list[Result]:
    scenarios: list[tuple[str, str, Callable[[], contextlib.AbstractContextManager[int]], bool]] = [
        ("UDP, live collector", "udp", lambda: reader("udp"), True),
        ("UDP, collector down", "udp", nothing_udp, True),
        ("TCP, live collector", "tcp", lambda: reader("tcp"), True),
        ("TCP, accepts, never reads", "tcp", deaf_listener, True),
        ("TCP, collector down", "tcp", nothing, False),
    ]
    out = []
    for name, transport, where, wait in scenarios:
        with where() as port:
            dest = HepDestination("bench", "127.0.0.1", port, transport)  # type: ignore[arg-type]
            out.append(await bench_send(name, dest, n, wait))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.hep_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--packets", type=int, default=50_000, help="packets per scenario")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args(argv)

    print(
        f"HEP cost per packet: {len(PAYLOAD)}-byte SIP payload, "
        f"{len(TEMPLATE.encode(0, 0, PAYLOAD, CALL_ID))}-byte HEP packet, "
        f"Python {sys.version.split()[0]}, {args.loop}, load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print()
    print(f"{'encode':<32}{'µs/packet':>10}")
    for label, us in bench_encode(args.packets):
        print(f"{label:<32}{us:>10.2f}")
    print()
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(bench_all(args.packets))
    else:
        results = asyncio.run(bench_all(args.packets))
    print(
        f"clock + template.encode() + HepSender.send(), {args.packets} packets, batches of {BATCH}"
    )
    print(
        f"{'collector':<28}{'mean':>7}{'p50':>7}{'p99':>7}{'loop':>7}   {'sent':>7}"
        f"{'dropped':>8}{'errors':>7}{'queue':>6}  state"
    )
    for r in results:
        s = r.stats
        print(
            f"{r.name:<28}{r.mean:>7.2f}{r.p50:>7.2f}{r.p99:>7.2f}{r.total:>7.2f}   "
            f"{s.sent:>7}{s.dropped:>8}{s.send_errors + s.connect_errors:>7}"
            f"{s.queue_depth:>6}  {s.state}"
        )
    print(
        "µs per packet. mean/p50/p99: the caller's cost (clock, encode, send), per batch of "
        f"{BATCH};\nloop: all the event loop's time per packet, including the sender's "
        "writes and syscalls.\nerrors: send errors + failed connection attempts."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
