"""What routing on a shared trunk (tcp: listeners, `tlstrace.sip.route`) costs per message, and
what one remembered transaction or dialog takes in memory.

    python -m bench.route_cost [--runs N] [--entries N]

CPU time (`time.process_time`, so other load on the machine counts less), best of 7 runs of
N calls each, for: framing a SIPp INVITE (for scale), reading its routing facts, learning from
it (a local connection sent it), and routing the peer's 200 OK. Memory: `tracemalloc` over N
INVITE/200 exchanges with distinct Call-IDs, branches and tags, against what the tables
account for (`trunk_max_table_bytes` bounds the accounted figure).
"""

from __future__ import annotations

import argparse
import time
import timeit
import tracemalloc
from collections.abc import Callable

from tlstrace.sip.framing import SipFramer
from tlstrace.sip.route import TrunkRoutes, peek

INVITE = (
    b"INVITE sip:service@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bK-7936-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=7936SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5070>\r\n"
    b"Call-ID: 1-7936@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.1:5061\r\nMax-Forwards: 70\r\n"
    b"Subject: Performance Test\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 129\r\n\r\n" + b"v" * 129
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bK-7936-1-0;received=127.0.0.1\r\n"
    b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=7936SIPpTag001\r\n"
    b"To: service <sip:service@127.0.0.1:5070>;tag=abc\r\n"
    b"Call-ID: 1-7936@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: <sip:peer@192.0.2.1>\r\nContent-Length: 0\r\n\r\n"
)


def cpu_us(fn: Callable[[], object], runs: int) -> float:
    return min(timeit.Timer(fn, timer=time.process_time).repeat(7, runs)) / runs * 1e6


def numbered(msg: bytes, i: int) -> bytes:
    return (
        msg.replace(b"1-7936@", b"%d-7936@" % i)
        .replace(b"z9hG4bK-7936-1-0", b"z9hG4bK-7936-%d-0" % i)
        .replace(b"SIPpTag001", b"SIPpTag00%d" % i)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--entries", type=int, default=20000)
    args = ap.parse_args()
    framer = SipFramer()
    routes: TrunkRoutes[int] = TrunkRoutes()
    print(f"CPU µs per message ({len(INVITE)}-byte INVITE, {len(OK)}-byte 200 OK)")
    for name, fn in [
        ("framing the INVITE (SipFramer.feed)", lambda: framer.feed(INVITE)),
        ("peek(INVITE)", lambda: peek(INVITE)),
        ("learn from the INVITE (from_local)", lambda: routes.from_local(1, INVITE, 0.0)),
        ("route the 200 OK (to_local)", lambda: routes.to_local(OK, 0.0)),
    ]:
        print(f"  {name:40} {cpu_us(fn, args.runs):6.2f}")
    n = args.entries
    invites = [numbered(INVITE, i) for i in range(n)]
    oks = [numbered(OK, i) for i in range(n)]
    big: TrunkRoutes[int] = TrunkRoutes(
        max_transactions=n + 1, max_dialogs=n + 1, max_bytes=1 << 30
    )
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for invite, ok in zip(invites, oks, strict=True):
        big.from_local(1, invite, 0.0)
        big.to_local(ok, 0.0)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    real = sum(s.size_diff for s in after.compare_to(before, "filename"))
    entries = sum(len(t) for t in big.tables)
    accounted = sum(t.bytes for t in big.tables)
    print(
        f"memory: {entries} entries (transactions and dialogs), {real / entries:.0f} bytes "
        f"each (tracemalloc), {accounted / entries:.0f} accounted"
    )


if __name__ == "__main__":
    main()
