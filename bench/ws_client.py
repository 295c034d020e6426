"""The load generator's WebSocket client side (RFC 6455, RFC 7118), sans-IO: the Upgrade
request and its answer, client frames out, server frames in.

Kept to what the benchmark needs and cheap, so that the generator stays the cheap side: each
request goes as one text frame, masked with a random key drawn once per generator process (the
relay unmasks every byte whatever the key, so the key changes nothing in what it costs), and
frames are built once per distinct request. Server frames must be unmasked; text frames are
answers, each one SIP message; a close frame, a binary or fragmented frame, or a masked one ends
the connection as a failure.
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass, field

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_HEAD_END = b"\r\n\r\n"
#: the most distinct requests whose frames are kept (the persistent and paced modes cycle
#: through 1,024; the handshake mode sends a new OPTIONS on each connection)
_CACHE_MAX = 4096


class WsError(Exception):
    """The server broke the WebSocket exchange (or refused the Upgrade)."""


def upgrade_request(host: str, path: str = "/") -> bytes:
    """An HTTP/1.1 Upgrade offering the `sip` subprotocol, with a fresh Sec-WebSocket-Key."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: sip\r\nUser-Agent: tlstrace-bench\r\n\r\n"
    ).encode()


def upgrade_response(buf: bytes) -> int:
    """How many bytes of `buf` the server's answer to the Upgrade takes (0: not all in yet).
    Raises WsError unless it is a 101 that selected the `sip` subprotocol."""
    end = buf.find(_HEAD_END)
    if end < 0:
        if len(buf) > 16384:
            raise WsError("the Upgrade answer has no end")
        return 0
    head = buf[:end].decode("latin-1")
    status, *lines = head.split("\r\n")
    if not status.startswith("HTTP/1.1 101"):
        raise WsError(f"Upgrade refused: {status[:60]!r}")
    protocols = [
        value.strip().lower()
        for name, _, value in (line.partition(":") for line in lines)
        if name.strip().lower() == "sec-websocket-protocol"
    ]
    if protocols != ["sip"]:
        raise WsError(f"the 101 selected the subprotocol(s) {protocols}, not sip")
    return end + 4


def mask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the 4-byte `key` repeated (RFC 6455 §5.3): masks and unmasks."""
    n = len(payload)
    if not n:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def client_frame(payload: bytes, key: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final client frame: masked with `key`."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + mask(payload, key)


@dataclass
class WsClient:
    """What one generator process's connections share: the masking key and the frames built."""

    key: bytes = field(default_factory=lambda: os.urandom(4))
    frames: dict[bytes, bytes] = field(default_factory=dict)

    def text(self, msg: bytes) -> bytes:
        frame = self.frames.get(msg)
        if frame is None:
            frame = client_frame(msg, self.key)
            if len(self.frames) < _CACHE_MAX:
                self.frames[msg] = frame
        return frame

    def close(self, code: int = 1000) -> bytes:
        return client_frame(struct.pack("!H", code), self.key, OP_CLOSE)

    def pong(self, payload: bytes) -> bytes:
        return client_frame(payload, self.key, OP_PONG)


@dataclass
class FrameReader:
    """Server frames out of the byte stream: `feed` returns the text messages now complete
    (their payloads, in order) and the pings to answer; raises WsError on anything else a
    benchmark server must not send (close included: the relay closed the connection)."""

    buf: bytes = b""

    def feed(self, data: bytes) -> tuple[list[bytes], list[bytes]]:
        buf = self.buf + data if self.buf else data
        texts: list[bytes] = []
        pings: list[bytes] = []
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            if b1 & 0x80:
                raise WsError("a masked server frame")
            size, head = b1 & 0x7F, 2
            if size == 126:
                if n - i < 4:
                    break
                size, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif size == 127:
                if n - i < 10:
                    break
                size, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if n - i < head + size:
                break
            payload = buf[i + head : i + head + size]
            i += head + size
            opcode = b0 & 0x0F
            if not b0 & 0x80 or opcode == OP_CONT:
                raise WsError("a fragmented server message")
            if opcode == OP_TEXT:
                texts.append(payload)
            elif opcode == OP_PING:
                pings.append(payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise WsError(f"closed by the server: {code} {payload[2:80]!r}")
            elif opcode != OP_PONG:
                raise WsError(f"an unexpected frame, opcode {opcode:#x}")
        self.buf = buf[i:]
        return texts, pings
