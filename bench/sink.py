"""A UDP sink for HEP: drains datagrams as fast as it can and counts them.

    python -m bench.sink --listen 127.0.0.1:9060

Prints `listening HOST:PORT` once bound, and on standard input's end (or SIGTERM/SIGINT) one
JSON line: {"datagrams": N, "bytes": N}. The benchmark points a tracing relay at it, so HEP
sends cost the relay what they cost against a real collector on the same machine, with nothing
parsed here.
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sink")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host or "127.0.0.1", int(port)))
    sock.setblocking(False)
    bound = sock.getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    counts = {"datagrams": 0, "bytes": 0}
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "udp")
    # stdin a regular file or /dev/null: stop on a signal only
    with contextlib.suppress(ValueError, OSError, PermissionError):
        sel.register(0, selectors.EVENT_READ, "stdin")
    buf = bytearray(65536)
    recv_into = sock.recv_into
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
            n = d = 0
            try:
                while True:
                    n += recv_into(buf)
                    d += 1
            except BlockingIOError:
                pass
            counts["datagrams"] += d
            counts["bytes"] += n
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
