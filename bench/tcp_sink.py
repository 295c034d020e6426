"""A TCP sink for HEP: accepts collectors' connections, drains them and counts the packets.

    python -m bench.tcp_sink --listen 127.0.0.1:9061

The TCP counterpart of `bench/sink.py`: prints `listening HOST:PORT` once bound, and on standard
input's end (or SIGTERM/SIGINT) one JSON line: {"packets": N, "bytes": N, "connections": N,
"bad": N}. Packets are counted from the HEPv3 framing of the stream ("HEP3" and a 16-bit total
length, network order); a stream that stops making sense is counted in "bad" and from then on
only its bytes are. Nothing else is parsed, so a tracing relay pointed here pays what a real
collector on the same machine would cost it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType
from typing import cast

_MAGIC = b"HEP3"


class StreamCounter:
    """Counts HEPv3 packets in a byte stream fed in arbitrary pieces (sans-IO)."""

    __slots__ = ("broken", "buf", "packets")

    def __init__(self) -> None:
        self.buf = b""
        self.packets = 0
        self.broken = False

    def feed(self, data: bytes) -> int:
        """Adds `data`; returns how many packets it completed."""
        if self.broken:
            return 0
        buf = self.buf + data if self.buf else data
        pos, n, end = 0, 0, len(buf)
        while end - pos >= 6:
            if buf[pos : pos + 4] != _MAGIC:
                self.broken = True
                self.buf = b""
                self.packets += n
                return n
            size = int.from_bytes(buf[pos + 4 : pos + 6], "big")
            if size < 6:
                self.broken = True
                self.buf = b""
                self.packets += n
                return n
            if end - pos < size:
                break
            pos += size
            n += 1
        self.buf = buf[pos:]
        self.packets += n
        return n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tcp_sink")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host or "127.0.0.1", int(port)))
    lsock.listen(64)
    lsock.setblocking(False)
    bound = lsock.getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    counts = {"packets": 0, "bytes": 0, "connections": 0, "bad": 0}
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    # stdin a regular file or /dev/null: stop on a signal only
    with contextlib.suppress(ValueError, OSError, PermissionError):
        sel.register(0, selectors.EVENT_READ, "stdin")
    streams: dict[socket.socket, StreamCounter] = {}
    while not stop:
        try:
            events = sel.select(1.0)
        except InterruptedError:
            continue
        for key, _ in events:
            if key.data == "stdin":
                if not os.read(0, 4096):
                    stop = True
                continue
            if key.data is None:  # the listening socket
                with contextlib.suppress(BlockingIOError):
                    while True:
                        conn, _ = lsock.accept()
                        conn.setblocking(False)
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                        streams[conn] = StreamCounter()
                        sel.register(conn, selectors.EVENT_READ, "conn")
                        counts["connections"] += 1
                continue
            conn = cast(socket.socket, key.fileobj)
            counter = streams[conn]
            closed = False
            try:
                while True:
                    data = conn.recv(1 << 20)
                    if not data:
                        closed = True
                        break
                    counts["bytes"] += len(data)
                    counter.feed(data)
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            if closed:
                sel.unregister(conn)
                conn.close()
                del streams[conn]
                counts["packets"] += counter.packets
                counts["bad"] += counter.broken
    for counter in streams.values():
        counts["packets"] += counter.packets
        counts["bad"] += counter.broken
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
