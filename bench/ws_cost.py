"""SIP over WebSocket load, for the WSS row: bench/loadgen.py's `persistent` mode with each
connection upgraded to WebSocket first and each request sent as one masked text frame.

    python -m bench.ws_cost --target tls:127.0.0.1:8443 --conns 50 --inflight 4 --cpu-pid PID
    (tls: target: wss; tcp: target: ws)

The client masks with the all-zero key (valid, RFC 6455 §5.3 asks only that clients pick keys a
script cannot predict): the generator stays the cheap side, as loadgen's TLS does. Answers are
counted as loadgen counts them (the server's frames are unmasked text frames whose payloads are
the SIP responses, so the frame headers do not disturb the count of `\\r\\n\\r\\n`).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence

from bench import loadgen

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\n\r\n"
)


def text_frame(payload: bytes) -> bytes:
    """A client text frame, masked with the zero key (so the payload is sent as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


class WsPersistentLink(loadgen.PersistentLink):
    def __init__(self, ctx: object, run: loadgen.Persistent, ready: Callable[[], None]) -> None:
        super().__init__(ctx, run, ready)  # type: ignore[arg-type]
        self.upgrading = False
        self.head = b""

    def on_open(self) -> None:
        self.upgrading = True
        loadgen.Link.send(self, UPGRADE)

    def plain_received(self, data: bytes) -> None:
        if self.upgrading:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101 "):
                self.fail(f"upgrade refused: {self.head[:40]!r}")
                return
            rest = self.head[end + 4 :]
            self.upgrading, self.head = False, b""
            self.ready()
            if rest:
                super().plain_received(rest)
            return
        super().plain_received(data)

    def send(self, msg: bytes) -> None:
        loadgen.Link.send(self, text_frame(msg))


def main(argv: Sequence[str] | None = None) -> int:
    loadgen.PersistentLink = WsPersistentLink  # type: ignore[misc]
    return loadgen.main(["persistent", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
