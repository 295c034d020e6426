"""PROXY protocol version 2 header (haproxy.org/download/2.6/doc/proxy-protocol.txt), sans-IO.

Sent first on a backend connection so the SIP server sees the real client address
(Kamailio `tcp_accept_haproxy`, OpenSIPS `allow_proxy_protocol`).
"""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_VERSION_PROXY = 0x21  # version 2, command PROXY
_TCP4, _TCP6 = 0x11, 0x21


def header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """The v2 header for a TCP connection from `source` to `destination` (IPv4 or IPv6)."""
    src: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(source[0])
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        # an IPv4 client on a dual-stack socket: express both as IPv6
        src = src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")
        dst = dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")
    family = _TCP4 if src.version == 4 else _TCP6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + struct.pack("!BBH", _VERSION_PROXY, family, len(body)) + body


def parse(data: bytes) -> tuple[tuple[str, int], tuple[str, int], int] | None:
    """(source, destination, header length) of a v2 PROXY header at the start of `data`."""
    if len(data) < 16 or not data.startswith(SIGNATURE):
        return None
    ver_cmd, family, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd != _VERSION_PROXY or len(data) < 16 + length:
        return None
    body = data[16 : 16 + length]
    if family == _TCP4 and length >= 12:
        size = 4
    elif family == _TCP6 and length >= 36:
        size = 16
    else:
        return None
    s = ipaddress.ip_address(body[0:size])
    d = ipaddress.ip_address(body[size : 2 * size])
    sp, dp = struct.unpack_from("!HH", body, 2 * size)
    return (str(s), sp), (str(d), dp), 16 + length
