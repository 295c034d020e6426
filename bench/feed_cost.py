"""What the status page's event feed costs the relay per connection: the observer that passes
each connection event on to tracing and to the feed, with no viewer connected and with
viewers (each event then encoded once and queued per viewer), against tracing's observer
alone.

    python -m bench.feed_cost [--calls N]

Times one accept and one close per connection (the relay's observer calls), best of 5 runs;
prints µs per connection.
"""

from __future__ import annotations

import argparse
import timeit

from tlstrace.feed import EventFeed, FeedObserver, Viewer
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.hooks import ConnectionObserver, NullObserver


def per_connection(
    observer: ConnectionObserver, conn: Connection, viewers: list[Viewer], calls: int
) -> float:
    def one() -> None:
        observer.handshake_done(conn)
        observer.closed(conn, CloseReason.EOF, None)
        for viewer in viewers:  # a viewer that keeps up takes its events
            viewer.take()

    return min(timeit.repeat(one, number=calls, repeat=5)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    conn = Connection(
        "inbound",
        ("192.0.2.10", 40000),
        ("10.0.0.2", 5061),
        "tls:0.0.0.0:5061",
        state="open",
        sni="sip.example.com",
        tls_version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        handshake_ms=2.1,
    )
    inner = NullObserver()
    print(f"{'observer':<40} µs per connection (accept + close)")
    print(f"{'tracing alone':<40} {per_connection(inner, conn, [], args.calls):8.2f}")
    for n in (0, 1, 4):
        feed = EventFeed()
        viewers = [v for v in (feed.subscribe() for _ in range(n)) if v is not None]
        cost = per_connection(FeedObserver(inner, feed), conn, viewers, args.calls)
        print(f"{f'through the feed, {n} viewer(s)':<40} {cost:8.2f}")


if __name__ == "__main__":
    main()
