"""A look at the first bytes a client sends, before OpenSSL sees them (sans-IO).

It tells apart "not TLS at all" (plain SIP, HTTP, garbage), SSLv2-style hellos, and TLS
ClientHellos, and reads from a ClientHello the versions offered, the SNI and the client random,
so that a failed handshake can be reported with a precise reason, and so that a tls: listener
can choose the server domain (by SNI) before OpenSSL sees the hello (see tls/contexts.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

TLS1_0, TLS1_1, TLS1_2, TLS1_3 = 0x0301, 0x0302, 0x0303, 0x0304
SSL3 = 0x0300
_SIP_METHODS = (
    b"INVITE",
    b"ACK",
    b"BYE",
    b"CANCEL",
    b"OPTIONS",
    b"REGISTER",
    b"PRACK",
    b"SUBSCRIBE",
    b"NOTIFY",
    b"PUBLISH",
    b"INFO",
    b"REFER",
    b"MESSAGE",
    b"UPDATE",
    b"SIP/2.0",
)


class HelloKind(StrEnum):
    INCOMPLETE = "incomplete"
    TLS = "tls"
    SSLV2 = "sslv2"
    PLAIN_SIP = "plain_sip"
    NOT_TLS = "not_tls"


@dataclass(frozen=True, slots=True)
class Hello:
    kind: HelloKind
    #: highest version the client offers (supported_versions, else the legacy field)
    max_version: int = 0
    sni: str | None = None
    client_random: bytes | None = None
    #: a host_name that is not ASCII (RFC 6066 allows only ASCII, IDNs as A-labels), as sent
    bad_sni: bytes | None = None


#: raw bytes a tls: listener holds while it waits for a whole ClientHello (OpenSSL would take up
#: to 128 KiB; real hellos, post-quantum key shares included, stay under 4 KiB)
MAX_HELLO_BYTES = 32768
#: the largest TLS plaintext record (RFC 8446 §5.1); OpenSSL refuses larger ones
_MAX_RECORD = 16384


def sniff(data: bytes) -> Hello:
    """Classify the first bytes of a connection (at least 1 byte)."""
    if not data:
        return Hello(HelloKind.INCOMPLETE)
    first = data[0]
    if first == 0x16:
        return HelloReader().feed(data)
    if first & 0x80 and len(data) >= 3 and data[2] == 0x01:
        return Hello(HelloKind.SSLV2, max_version=SSL3)
    upper = data[:8].upper()
    if any(upper.startswith(m[: len(upper)]) for m in _SIP_METHODS) and len(upper) >= 3:
        return Hello(HelloKind.PLAIN_SIP)
    return Hello(HelloKind.NOT_TLS)


class HelloReader:
    """Reads a ClientHello that may arrive in pieces and span several handshake records.

    `feed()` takes the next bytes of the stream and returns a Hello of kind INCOMPLETE until the
    whole ClientHello message is there; then its facts (kind TLS). The bytes are kept once, in
    `raw` (what OpenSSL is given afterwards); each is looked at once however the stream is
    cut, and the message is joined from its record fragments only when complete. Anything that
    is not a ClientHello in handshake records gives a Hello of kind TLS without facts: OpenSSL
    decides what is wrong with it.
    """

    __slots__ = ("_frags", "_have", "_need", "_pos", "raw")

    def __init__(self) -> None:
        #: every byte fed, in order
        self.raw = bytearray()
        self._pos = 0  # where the next record starts in raw
        self._frags: list[tuple[int, int]] = []  # the message's fragments: (start, end) in raw
        self._have = 0  # message bytes in the fragments
        self._need = 0  # the message's length with its header, once known

    @property
    def total(self) -> int:
        """Raw bytes fed so far."""
        return len(self.raw)

    def feed(self, data: bytes) -> Hello:
        raw = self.raw
        raw += data
        while True:
            p = self._pos
            if len(raw) < p + 5:
                return Hello(HelloKind.INCOMPLETE)
            record_len = raw[p + 3] << 8 | raw[p + 4]
            if raw[p] != 0x16 or record_len == 0 or record_len > _MAX_RECORD:
                return Hello(HelloKind.TLS)
            if len(raw) < p + 5 + record_len:
                return Hello(HelloKind.INCOMPLETE)
            if not self._frags and raw[p + 5] != 0x01:
                return Hello(HelloKind.TLS)
            self._frags.append((p + 5, p + 5 + record_len))
            self._have += record_len
            self._pos = p + 5 + record_len
            if not self._need and self._have >= 4:
                head = self._join(4)
                self._need = 4 + int.from_bytes(head[1:4], "big")
            if self._need and self._have >= self._need:
                try:
                    return _parse_client_hello(self._join(self._need))
                except (struct.error, IndexError):
                    return Hello(HelloKind.TLS)

    def _join(self, n: int) -> bytes:
        """The first `n` bytes of the message."""
        out = bytearray()
        for start, end in self._frags:
            out += self.raw[start : min(end, start + n - len(out))]
            if len(out) >= n:
                break
        return bytes(out)


def _parse_client_hello(body: bytes) -> Hello:
    p = 4  # handshake type + 24-bit length
    legacy_version = struct.unpack_from("!H", body, p)[0]
    p += 2
    client_random = body[p : p + 32]
    p += 32
    p += 1 + body[p]  # session id
    p += 2 + struct.unpack_from("!H", body, p)[0]  # cipher suites
    p += 1 + body[p]  # compression methods
    max_version, sni, bad_sni = legacy_version, None, None
    if p > len(body):
        raise IndexError("truncated ClientHello")
    if p + 2 <= len(body):
        end = min(len(body), p + 2 + struct.unpack_from("!H", body, p)[0])
        p += 2
        while p + 4 <= end:
            ext_type, ext_len = struct.unpack_from("!HH", body, p)
            ext = body[p + 4 : p + 4 + ext_len]
            p += 4 + ext_len
            if ext_type == 0x0000 and len(ext) >= 5 and ext[2] == 0:  # server_name, host_name
                name_len = struct.unpack_from("!H", ext, 3)[0]
                name = ext[5 : 5 + name_len]
                if name.isascii():
                    sni = name.decode("ascii")
                else:
                    bad_sni = name
            elif ext_type == 0x002B and ext:  # supported_versions
                versions = [struct.unpack_from("!H", ext, 1 + i)[0] for i in range(0, ext[0], 2)]
                real = [v for v in versions if v & 0x0F0F == v and 0x0300 <= v <= 0x03FF]
                if real:
                    max_version = max(real)
    return Hello(
        HelloKind.TLS,
        max_version=max_version,
        sni=sni,
        client_random=client_random,
        bad_sni=bad_sni,
    )
