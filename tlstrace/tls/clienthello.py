"""A look at the first bytes a client sends, before OpenSSL sees them (sans-IO).

It tells apart "not TLS at all" (plain SIP, HTTP, garbage), SSLv2-style hellos, and TLS
ClientHellos, and reads from a ClientHello the versions offered, the SNI and the client random,
so that a failed handshake can be reported with a precise reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

TLS1_0, TLS1_1, TLS1_2, TLS1_3 = 0x0301, 0x0302, 0x0303, 0x0304
SSL3 = 0x0300
_SIP_METHODS = (b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"REGISTER", b"PRACK",
                b"SUBSCRIBE", b"NOTIFY", b"PUBLISH", b"INFO", b"REFER", b"MESSAGE", b"UPDATE",
                b"SIP/2.0")


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


def sniff(data: bytes) -> Hello:
    """Classify the first bytes of a connection (at least 1 byte)."""
    if not data:
        return Hello(HelloKind.INCOMPLETE)
    first = data[0]
    if first == 0x16:
        return _parse_tls(data)
    if first & 0x80 and len(data) >= 3 and data[2] == 0x01:
        return Hello(HelloKind.SSLV2, max_version=SSL3)
    upper = data[:8].upper()
    if any(upper.startswith(m[: len(upper)]) for m in _SIP_METHODS) and len(upper) >= 3:
        return Hello(HelloKind.PLAIN_SIP)
    return Hello(HelloKind.NOT_TLS)


def _parse_tls(data: bytes) -> Hello:
    if len(data) < 5:
        return Hello(HelloKind.INCOMPLETE)
    record_len = struct.unpack_from("!H", data, 3)[0]
    body = data[5 : 5 + record_len]
    # a ClientHello in one record is all we read; anything odd stays "tls" and OpenSSL decides
    if len(body) < 4 or body[0] != 0x01:
        return Hello(HelloKind.TLS if len(data) >= 5 + record_len else HelloKind.INCOMPLETE)
    try:
        return _parse_client_hello(body)
    except (struct.error, IndexError, UnicodeDecodeError):
        return Hello(HelloKind.TLS)


def _parse_client_hello(body: bytes) -> Hello:
    p = 4  # handshake type + 24-bit length
    legacy_version = struct.unpack_from("!H", body, p)[0]
    p += 2
    client_random = body[p : p + 32]
    p += 32
    p += 1 + body[p]  # session id
    p += 2 + struct.unpack_from("!H", body, p)[0]  # cipher suites
    p += 1 + body[p]  # compression methods
    max_version, sni = legacy_version, None
    if p + 2 <= len(body):
        end = min(len(body), p + 2 + struct.unpack_from("!H", body, p)[0])
        p += 2
        while p + 4 <= end:
            ext_type, ext_len = struct.unpack_from("!HH", body, p)
            ext = body[p + 4 : p + 4 + ext_len]
            p += 4 + ext_len
            if ext_type == 0x0000 and len(ext) >= 5 and ext[2] == 0:  # server_name, host_name
                name_len = struct.unpack_from("!H", ext, 3)[0]
                sni = ext[5 : 5 + name_len].decode("ascii")
            elif ext_type == 0x002B and ext:  # supported_versions
                versions = [struct.unpack_from("!H", ext, 1 + i)[0] for i in range(0, ext[0], 2)]
                real = [v for v in versions if v & 0x0F0F == v and 0x0300 <= v <= 0x03FF]
                if real:
                    max_version = max(real)
    return Hello(HelloKind.TLS, max_version=max_version, sni=sni, client_random=client_random)
