"""What tracing costs the relay per SIP message, in process: a 600-byte INVITE and its 200 OK
through a real `ConnectionTracer` (real `TraceManager`, session records on, as by default) and
real `HepSender`s to a collector in another process that drains (UDP, TCP, or both at once).

    python -m bench.trace_cost [--pairs N] [--connections C] [--per-iteration K]
                               [--loop uvloop|asyncio] [--profile udp|tcp|both]

The relay calls `tracer.messages(chunks, received, time.time())` once per read and once per
write; here each event-loop iteration carries K such reads and K writes spread over C traced
connections, each INVITE with its own Call-ID (so each call sends its session record, as in
`python -m bench --scenario persistent`), then the loop runs once (the senders' callbacks and
tasks do their part there). CPU is this process's utime + stime (the kernel's UDP/TCP loopback
work is charged to the sender, as in the relay), per traced SIP message, minus the harness's
own loop (the same loop with nothing traced).

Rows, from which the breakdown follows:
- `Call-ID peek`: `call_id()` of each message alone;
- `packet build`: the template encode of each message's packet alone (and of the session
  record, one per INVITE);
- `tracer, no destination`: `messages()` with no sender: peek, build, session record,
  bookkeeping;
- `tracer + udp`, `tracer + tcp`, `tracer + udp + tcp`: with the senders; the difference with
  the row above is what sending costs (queueing, syscalls, the kernel's loopback work);
- `raw udp send`: one `socket.send` per packet of a prebuilt packet, nothing else: the floor.

`--profile` runs that variant again under cProfile and prints the top functions (cProfile
inflates Python calls: read it for where, not for how much).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop

from bench.hep_cost import reader
from bench.loadgen import invite
from hep.destination import HepDestination
from hep.sender import HepSender
from tlstrace.config.load import validate
from tlstrace.relay.connection import Connection
from tlstrace.sip.peek import call_id
from tlstrace.trace.tracer import ConnectionTracer, TraceManager


def ok_for(request: bytes) -> bytes:
    """The 200 OK of a request: its Via, From, To (with a tag), Call-ID and CSeq."""
    lines = request.split(b"\r\n")
    keep = [
        ln
        for ln in lines
        if ln.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"cseq")
    ]
    keep = [ln + b";tag=b1" if ln.lower().startswith(b"to:") else ln for ln in keep]
    return b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""])


def cpu() -> float:
    return time.process_time()


def connections(n: int) -> list[Connection]:
    out = []
    for i in range(n):
        c = Connection(
            "inbound",
            ("192.0.2.10", 40000 + i),
            ("127.0.0.1", 5061),
            "tls:127.0.0.1:5061",
            sni="sip.example.com",
            tls_version="TLSv1.3",
            cipher="TLS_AES_256_GCM_SHA384",
            handshake_ms=1.5,
        )
        c.state = "open"
        out.append(c)
    return out


async def run_variant(
    name: str,
    dests: list[HepDestination],
    *,
    pairs: int,
    conns: int,
    per_iteration: int,
    profile: bool = False,
) -> tuple[float, dict[str, int]]:
    """µs of CPU per traced message for one variant, and the senders' counters."""
    config = validate({"hep_id": ["[h]127.0.0.1:9"], "trace_on": True}, "bench")
    senders = [HepSender(d, backoff_initial=0.5, backoff_max=5.0) for d in dests]
    for s in senders:
        await s.start()
        assert await s.wait_connected(5), s.stats
    manager = TraceManager(config, list(senders))
    tracers = [ConnectionTracer(manager, c) for c in connections(conns)]
    invites = [invite(i) for i in range(pairs)]
    oks = [ok_for(m) for m in invites]
    tpl = tracers[0].tpl_in
    packets = [tpl.encode(1700000000, 1, m, call_id(m)) for m in invites[:1]]
    raw: socket.socket | None = None
    if name == "raw udp send":
        raw = senders[0]._sock  # the sender's own connected socket
        assert raw is not None

    def step(i: int) -> None:
        t = tracers[i % conns]
        if name == "harness":
            return
        if name == "Call-ID peek":
            call_id(invites[i])
            call_id(oks[i])
            return
        if name == "packet build":
            now = time.time()
            sec = int(now)
            usec = int((now - sec) * 1e6)
            cid = call_id(invites[i])
            t.tpl_in.encode(sec, usec, invites[i], cid)
            t.tpl_out.encode(sec, usec, oks[i], cid)
            assert t.session is not None
            t.session[1].encode(sec, usec, b"x" * 420, cid)
            return
        if raw is not None:
            send = raw.send
            p = packets[0]
            for _ in range(3):  # INVITE, 200 OK, session record
                with contextlib.suppress(BlockingIOError):
                    send(p)
            return
        t.messages([invites[i]], True, time.time())
        t.messages([oks[i]], False, time.time())

    prof = cProfile.Profile() if profile else None
    # warm up on the first tenth, measure the rest
    warm = pairs // 10
    i = 0
    start = 0.0
    while i < pairs:
        if i >= warm and not start:
            start = cpu()
            if prof is not None:
                prof.enable()
        for _ in range(per_iteration):
            if i >= pairs:
                break
            step(i)
            i += 1
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    used = cpu() - start
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    await asyncio.sleep(0.05)  # the last TCP batch (flush_delay) before the counters
    stats: dict[str, int] = {}
    for s in senders:
        st = s.stats
        stats[f"{s.dest.transport} sent"] = st.sent
        stats[f"{s.dest.transport} dropped"] = st.dropped
    for s in senders:
        await s.aclose(2.0)
    return used / ((pairs - warm) * 2) * 1e6, stats


async def main_async(args: argparse.Namespace) -> None:
    with reader("udp") as udp_port, reader("tcp") as tcp_port:
        udp = HepDestination("udp", "127.0.0.1", udp_port, "udp")
        tcp = HepDestination("tcp", "127.0.0.1", tcp_port, "tcp")
        variants: list[tuple[str, list[HepDestination]]] = [
            ("harness", []),
            ("Call-ID peek", []),
            ("packet build", []),
            ("tracer, no destination", []),
            ("tracer + udp", [udp]),
            ("tracer + tcp", [tcp]),
            ("tracer + udp + tcp", [udp, tcp]),
            ("raw udp send", [udp]),
        ]
        kw: dict[str, Any] = {
            "pairs": args.pairs,
            "conns": args.connections,
            "per_iteration": args.per_iteration,
        }
        results: dict[str, list[float]] = {n: [] for n, _ in variants}
        counters: dict[str, dict[str, int]] = {}
        for _ in range(args.repeat):
            for name, dests in variants:
                us, counts = await run_variant(name, dests, **kw)
                results[name].append(us)
                counters[name] = counts
        base = min(results["harness"])
        print(
            f"CPU per traced message (µs, best of {args.repeat}, harness {base:.2f} µs "
            f"subtracted; {args.pairs} INVITE/200 OK pairs, {args.connections} connections, "
            f"{args.per_iteration} pairs per loop iteration, {args.loop})"
        )
        for name, _ in variants[1:]:
            best = min(results[name]) - base
            extra = ", ".join(f"{k} {v}" for k, v in counters.get(name, {}).items())
            spread = max(results[name]) - min(results[name])
            extra = f"   {extra}" if extra else ""
            print(f"  {name:<24} {best:7.2f}   (spread {spread:.2f}){extra}")
        if args.profile:
            dests = {"udp": [udp], "tcp": [tcp], "both": [udp, tcp]}[args.profile]
            label = {"udp": "tracer + udp", "tcp": "tracer + tcp", "both": "tracer + udp + tcp"}
            await run_variant(label[args.profile], dests, profile=True, **kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trace_cost", description=__doc__)
    p.add_argument("--pairs", type=int, default=40000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--per-iteration", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--profile", choices=["udp", "tcp", "both"])
    args = p.parse_args(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        uvloop.new_event_loop if args.loop == "uvloop" else None
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
