"""HEPv3 codec, sans-IO: `HepPacket`, `encode`, `decode`, `PacketTemplate`, `StreamDecoder`.

Wire format (all integers big-endian)::

    "HEP3" | total length u16 (header included) | chunks...
    chunk = vendor u16 | type u16 | length u16 (these 6 bytes included) | body

`encode` writes the generic chunks in the order heplify uses and receivers expect:
0x01, 0x02, 0x03/0x04 or 0x05/0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, then the optional
0x0d, 0x0e, 0x11, 0x12, 0x13, then the unknown chunks of the packet (in their order), and the
payload 0x0f last. Packets built by tlstrace carry no unknown chunks, so they never contain a
vendor chunk nor 0x0010 (compressed payload, which no receiver decompresses).

`decode` is strict: anything it cannot read exactly raises `HepDecodeError`, and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from socket import AF_INET as _AF4
from socket import AF_INET6 as _AF6
from socket import inet_ntop, inet_pton
from typing import NamedTuple

__all__ = [
    "AF_INET",
    "AF_INET6",
    "CHUNK_NAMES",
    "MAX_PACKET",
    "HepChunk",
    "HepDecodeError",
    "HepPacket",
    "PacketTemplate",
    "StreamDecoder",
    "decode",
    "encode",
    "timestamp_chunks",
]

#: HEP's IP family values (chunk 0x0001): the Linux AF_INET and AF_INET6 numbers.
AF_INET = 2
AF_INET6 = 10
#: A HEP packet's total length is a u16 that includes the 6-byte header.
MAX_PACKET = 0xFFFF
MAGIC = b"HEP3"
#: The spec also allows "EEP3"; `decode` accepts it, `encode` always writes "HEP3".
_MAGICS = (b"HEP3", b"EEP3")

CHUNK_NAMES: dict[int, str] = {
    0x01: "IP family",
    0x02: "IP protocol",
    0x03: "IPv4 source address",
    0x04: "IPv4 destination address",
    0x05: "IPv6 source address",
    0x06: "IPv6 destination address",
    0x07: "source port",
    0x08: "destination port",
    0x09: "timestamp seconds",
    0x0A: "timestamp microseconds",
    0x0B: "protocol type",
    0x0C: "capture agent id",
    0x0D: "keep-alive timer",
    0x0E: "auth key",
    0x0F: "payload",
    0x11: "correlation id",
    0x12: "VLAN id",
    0x13: "node name",
}
#: Body size of the fixed-size generic chunks.
_FIXED: dict[int, int] = {
    0x01: 1,
    0x02: 1,
    0x03: 4,
    0x04: 4,
    0x05: 16,
    0x06: 16,
    0x07: 2,
    0x08: 2,
    0x09: 4,
    0x0A: 4,
    0x0B: 1,
    0x0C: 4,
    0x0D: 2,
    0x12: 2,
}
#: Chunks every packet must carry (hep.md §7: what Kamailio and Homer need).
_REQUIRED = (0x01, 0x02, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0F)

_HDR = struct.Struct("!4sH")
_CHUNK_HDR = struct.Struct("!HHH")
_U8 = struct.Struct("!HHHB")
_U16 = struct.Struct("!HHHH")
_U32 = struct.Struct("!HHHI")


class HepDecodeError(ValueError):
    """The bytes are not one well-formed HEPv3 packet. The message names the problem and,
    when there is one, the chunk (`chunk_type`) and its byte offset (`offset`)."""

    def __init__(
        self, message: str, *, chunk_type: int | None = None, offset: int | None = None
    ) -> None:
        super().__init__(message)
        self.chunk_type = chunk_type
        self.offset = offset


class HepChunk(NamedTuple):
    """A chunk the codec does not interpret (vendor chunk, or an unhandled generic type)."""

    vendor: int
    type: int
    body: bytes


def _cname(ctype: int) -> str:
    name = CHUNK_NAMES.get(ctype)
    return f"chunk 0x{ctype:04x} ({name})" if name else f"chunk 0x{ctype:04x}"


def _check_uint(name: str, value: object, bits: int, chunk: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} = {value} does not fit {_cname(chunk)}: 0..{(1 << bits) - 1}")


def _check_octets(name: str, value: object, chunk: int, *, optional: bool = True) -> int:
    """Validate an octet-string field; return its chunk size (0 when absent)."""
    if value is None and optional:
        return 0
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) > MAX_PACKET - 6:
        raise ValueError(f"{name} is {len(value)} bytes: too long for {_cname(chunk)}")
    return 6 + len(value)


def _parse_ip(name: str, text: object) -> tuple[int, bytes]:
    """(4 or 6, packed address) of an IP address in text."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be an IP address as text, not {type(text).__name__}")
    try:
        return 4, inet_pton(_AF4, text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    if "%" in text:
        raise ValueError(f"{name} = {text!r}: HEP cannot carry an IPv6 scope id")
    try:
        return 6, inet_pton(_AF6, text)
    except (OSError, ValueError):
        raise ValueError(f"{name} = {text!r} is not an IPv4 or IPv6 address") from None


def _ip_text(packed: bytes) -> str:
    return inet_ntop(_AF4 if len(packed) == 4 else _AF6, packed)


@dataclass(frozen=True, slots=True, kw_only=True)
class HepPacket:
    """One HEPv3 message. Construction validates every field, so any `HepPacket` encodes.

    `family` 0 (the default) means "from the addresses": it becomes 2 (IPv4) or 10 (IPv6).
    Addresses are normalised to their canonical text (`2001:DB8::1` -> `2001:db8::1`).
    Octet-string chunks (auth key, correlation id, node name, payload) are bytes.
    """

    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    ts_sec: int
    ts_usec: int
    #: 17 UDP, 6 TCP (also for TLS, the standard choice), 132 SCTP; 22 is Kamailio's "TLS".
    ip_proto: int
    payload: bytes
    #: Payload type: 1 SIP, 5 RTCP, 100 log, ... (hep.md §1.4).
    proto_type: int = 1
    capture_id: int = 0
    family: int = 0
    keep_alive: int | None = None
    auth_key: bytes | None = None
    correlation_id: bytes | None = None
    vlan: int | None = None
    node_name: bytes | None = None
    #: Chunks kept as they are, written before the payload.
    unknown: tuple[HepChunk, ...] = field(default=())

    def __post_init__(self) -> None:
        version, src = _parse_ip("src_ip", self.src_ip)
        dst_version, dst = _parse_ip("dst_ip", self.dst_ip)
        if version != dst_version:
            raise ValueError(
                f"src_ip {self.src_ip!r} and dst_ip {self.dst_ip!r} are of different IP versions"
            )
        expected = AF_INET if version == 4 else AF_INET6
        if self.family == 0:
            object.__setattr__(self, "family", expected)
        elif self.family != expected:
            raise ValueError(
                f"family = {self.family!r} does not match IPv{version} addresses "
                f"(expected {expected})"
            )
        object.__setattr__(self, "src_ip", _ip_text(src))
        object.__setattr__(self, "dst_ip", _ip_text(dst))
        _check_uint("ip_proto", self.ip_proto, 8, 0x02)
        _check_uint("src_port", self.src_port, 16, 0x07)
        _check_uint("dst_port", self.dst_port, 16, 0x08)
        _check_uint("ts_sec", self.ts_sec, 32, 0x09)
        _check_uint("ts_usec", self.ts_usec, 32, 0x0A)
        if self.ts_usec > 999_999:
            raise ValueError(f"ts_usec = {self.ts_usec} is not a microsecond offset (0..999999)")
        _check_uint("proto_type", self.proto_type, 8, 0x0B)
        _check_uint("capture_id", self.capture_id, 32, 0x0C)
        size = 6 + 7 + 7 + (10 + 10 if version == 4 else 22 + 22) + 8 + 8 + 10 + 10 + 7 + 10
        if self.keep_alive is not None:
            _check_uint("keep_alive", self.keep_alive, 16, 0x0D)
            size += 8
        if self.vlan is not None:
            _check_uint("vlan", self.vlan, 16, 0x12)
            size += 8
        size += _check_octets("auth_key", self.auth_key, 0x0E)
        size += _check_octets("correlation_id", self.correlation_id, 0x11)
        size += _check_octets("node_name", self.node_name, 0x13)
        size += _check_octets("payload", self.payload, 0x0F, optional=False)
        unknown = tuple(HepChunk(*c) for c in self.unknown)
        for c in unknown:
            _check_uint("unknown chunk vendor", c.vendor, 16, 0)
            _check_uint("unknown chunk type", c.type, 16, 0)
            if c.vendor == 0 and c.type in CHUNK_NAMES:
                raise ValueError(
                    f"unknown chunk 0x{c.type:04x} is the generic {CHUNK_NAMES[c.type]}: "
                    "set the field instead"
                )
            size += _check_octets("unknown chunk body", c.body, c.type, optional=False)
        object.__setattr__(self, "unknown", unknown)
        if size > MAX_PACKET:
            raise ValueError(f"the packet would be {size} bytes; HEPv3 allows {MAX_PACKET}")

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch (float; use ts_sec/ts_usec for exact values)."""
        return self.ts_sec + self.ts_usec / 1_000_000


def _octets(ctype: int, body: bytes) -> bytes:
    return _CHUNK_HDR.pack(0, ctype, 6 + len(body)) + body


def encode(packet: HepPacket) -> bytes:
    """The wire bytes of `packet` (chunk order in the module docstring)."""
    p = packet
    if p.family == AF_INET:
        src = _octets(0x03, inet_pton(_AF4, p.src_ip))
        dst = _octets(0x04, inet_pton(_AF4, p.dst_ip))
    else:
        src = _octets(0x05, inet_pton(_AF6, p.src_ip))
        dst = _octets(0x06, inet_pton(_AF6, p.dst_ip))
    chunks = [
        _U8.pack(0, 0x01, 7, p.family),
        _U8.pack(0, 0x02, 7, p.ip_proto),
        src,
        dst,
        _U16.pack(0, 0x07, 8, p.src_port),
        _U16.pack(0, 0x08, 8, p.dst_port),
        _U32.pack(0, 0x09, 10, p.ts_sec),
        _U32.pack(0, 0x0A, 10, p.ts_usec),
        _U8.pack(0, 0x0B, 7, p.proto_type),
        _U32.pack(0, 0x0C, 10, p.capture_id),
    ]
    if p.keep_alive is not None:
        chunks.append(_U16.pack(0, 0x0D, 8, p.keep_alive))
    if p.auth_key is not None:
        chunks.append(_octets(0x0E, p.auth_key))
    if p.correlation_id is not None:
        chunks.append(_octets(0x11, p.correlation_id))
    if p.vlan is not None:
        chunks.append(_U16.pack(0, 0x12, 8, p.vlan))
    if p.node_name is not None:
        chunks.append(_octets(0x13, p.node_name))
    for c in p.unknown:
        chunks.append(_CHUNK_HDR.pack(c.vendor, c.type, 6 + len(c.body)) + c.body)
    chunks.append(_octets(0x0F, p.payload))
    body = b"".join(chunks)
    return _HDR.pack(MAGIC, 6 + len(body)) + body


def _header_error(data: bytes | bytearray) -> HepDecodeError | None:
    """Why the first bytes of `data` cannot start a HEPv3 packet, or None."""
    head = bytes(data[:4])
    if any(m.startswith(head) for m in _MAGICS):
        return None
    if head[:1] in (b"\x01", b"\x02"):
        return HepDecodeError(f"HEPv{head[0]} packet (header {head.hex()}): only HEPv3 is read")
    return HepDecodeError(f"bad magic {head!r}: a HEPv3 packet starts with b'HEP3'", offset=0)


def decode(data: bytes | bytearray | memoryview) -> HepPacket:
    """Read exactly one HEPv3 packet from `data` (all of it). Raises `HepDecodeError`."""
    buf = bytes(data)
    n = len(buf)
    err = _header_error(buf)
    if err is not None:
        raise err
    if n < 6:
        raise HepDecodeError(f"truncated header: {n} bytes, the HEPv3 header is 6", offset=0)
    total = (buf[4] << 8) | buf[5]
    if total != n:
        raise HepDecodeError(f"total length field is {total} but {n} bytes were given", offset=4)
    found: dict[int, bytes] = {}
    unknown: list[HepChunk] = []
    off = 6
    while off < n:
        if n - off < 6:
            raise HepDecodeError(
                f"truncated chunk header at offset {off}: {n - off} bytes left, "
                "a chunk header is 6",
                offset=off,
            )
        vendor, ctype, clen = _CHUNK_HDR.unpack_from(buf, off)
        if clen < 6:
            what = "zero-length chunk" if clen == 0 else f"chunk length {clen} (below 6)"
            raise HepDecodeError(
                f"{what}: {_cname(ctype)} at offset {off} "
                "(a chunk's length counts its 6-byte header)",
                chunk_type=ctype,
                offset=off,
            )
        end = off + clen
        if end > n:
            raise HepDecodeError(
                f"truncated chunk: {_cname(ctype)} at offset {off} has length {clen} "
                f"but only {n - off} bytes are left",
                chunk_type=ctype,
                offset=off,
            )
        body = buf[off + 6 : end]
        if vendor == 0 and ctype in CHUNK_NAMES:
            size = _FIXED.get(ctype)
            if size is not None and len(body) != size:
                raise HepDecodeError(
                    f"wrong size: {_cname(ctype)} at offset {off} has a {len(body)}-byte body, "
                    f"expected {size}",
                    chunk_type=ctype,
                    offset=off,
                )
            if ctype in found:
                what = "more than one payload" if ctype == 0x0F else "duplicate chunk"
                raise HepDecodeError(
                    f"{what}: {_cname(ctype)} again at offset {off}", chunk_type=ctype, offset=off
                )
            found[ctype] = body
        else:
            unknown.append(HepChunk(vendor, ctype, body))
        off = end
    return _build(found, tuple(unknown))


def _build(found: dict[int, bytes], unknown: tuple[HepChunk, ...]) -> HepPacket:
    for ctype in _REQUIRED:
        if ctype not in found:
            raise HepDecodeError(f"missing {_cname(ctype)}", chunk_type=ctype)
    v4 = 0x03 in found or 0x04 in found
    v6 = 0x05 in found or 0x06 in found
    if v4 and v6:
        raise HepDecodeError("both IPv4 (0x0003/0x0004) and IPv6 (0x0005/0x0006) address chunks")
    if not v4 and not v6:
        raise HepDecodeError(
            "missing address chunks (0x0003/0x0004 or 0x0005/0x0006)", chunk_type=0x03
        )
    s_type, d_type = (0x03, 0x04) if v4 else (0x05, 0x06)
    for ctype in (s_type, d_type):
        if ctype not in found:
            raise HepDecodeError(f"missing {_cname(ctype)}", chunk_type=ctype)
    family = found[0x01][0]
    expected = AF_INET if v4 else AF_INET6
    if family != expected:
        raise HepDecodeError(
            f"{_cname(0x01)} is {family} but the addresses are IPv{4 if v4 else 6} "
            f"(expected {expected})",
            chunk_type=0x01,
        )
    usec = int.from_bytes(found[0x0A], "big")
    if usec > 999_999:
        raise HepDecodeError(
            f"{_cname(0x0A)} is {usec}: not a microsecond offset (0..999999)", chunk_type=0x0A
        )

    def u(ctype: int) -> int | None:
        body = found.get(ctype)
        return None if body is None else int.from_bytes(body, "big")

    try:
        return HepPacket(
            family=family,
            ip_proto=found[0x02][0],
            src_ip=_ip_text(found[s_type]),
            dst_ip=_ip_text(found[d_type]),
            src_port=int.from_bytes(found[0x07], "big"),
            dst_port=int.from_bytes(found[0x08], "big"),
            ts_sec=int.from_bytes(found[0x09], "big"),
            ts_usec=usec,
            proto_type=found[0x0B][0],
            capture_id=int.from_bytes(found[0x0C], "big"),
            keep_alive=u(0x0D),
            auth_key=found.get(0x0E),
            correlation_id=found.get(0x11),
            vlan=u(0x12),
            node_name=found.get(0x13),
            payload=found[0x0F],
            unknown=unknown,
        )
    except (ValueError, TypeError) as e:  # a safety net: the checks above should catch all
        raise HepDecodeError(f"invalid packet: {e}") from None


def timestamp_chunks(ts_sec: int, ts_usec: int) -> bytes:
    """The timestamp chunks (0x0009, 0x000a) of a packet: `PacketTemplate.encode_at` takes
    them, so that the packets of one instant (a batch of messages) pack them once. Raises
    ValueError when a value does not fit."""
    if not 0 <= ts_usec <= 999_999:
        raise ValueError(f"ts_usec = {ts_usec} is not a microsecond offset (0..999999)")
    try:
        return _TS.pack(0, 0x09, 10, ts_sec, 0, 0x0A, 10, ts_usec)
    except struct.error:
        raise ValueError(f"ts_sec = {ts_sec} does not fit {_cname(0x09)}") from None


_TS = struct.Struct("!HHHIHHHI")
_OVERFLOW = (struct.error, OverflowError)


class PacketTemplate:
    """The fixed part of the packets of one flow, encoded once; `encode` adds the rest.

    Build one per connection and direction. `template.encode(...)` returns exactly the bytes
    of `encode(HepPacket(<the template's fields>, ts_sec=..., ts_usec=..., payload=...,
    correlation_id=...))` for a fraction of the work; `encode_at(timestamp_chunks(sec, usec),
    ...)` the same bytes, the timestamp packed once for several packets.
    """

    __slots__ = (
        "_cid_pack",
        "_fixed",
        "_head",
        "_mid",
        "_mid_tail",
        "_packet",
        "_parts",
        "_plain_pack",
        "_tail_b",
        "_tail_pl",
    )

    def __init__(
        self,
        *,
        src_ip: str,
        dst_ip: str,
        src_port: int,
        dst_port: int,
        ip_proto: int,
        proto_type: int = 1,
        capture_id: int = 0,
        family: int = 0,
        keep_alive: int | None = None,
        auth_key: bytes | None = None,
        vlan: int | None = None,
        node_name: bytes | None = None,
    ) -> None:
        p = HepPacket(
            src_ip=src_ip,
            dst_ip=dst_ip,
            src_port=src_port,
            dst_port=dst_port,
            ts_sec=0,
            ts_usec=0,
            ip_proto=ip_proto,
            payload=b"",
            proto_type=proto_type,
            capture_id=capture_id,
            family=family,
            keep_alive=keep_alive,
            auth_key=auth_key,
            vlan=vlan,
            node_name=node_name,
        )
        self._packet = p
        whole = encode(p)
        # whole = header | head (0x01..0x08) | ts (0x09, 0x0a) | mid_a (0x0b..0x0e) | tail_b
        #         (0x12, 0x13) | payload header; the correlation id goes between mid_a and tail_b.
        head_len = 14 + (20 if p.family == AF_INET else 44) + 16
        head = whole[6 : 6 + head_len]
        mid_start = 6 + head_len + 20
        mid_a_len = 17 + (8 if keep_alive is not None else 0)
        mid_a_len += 0 if auth_key is None else 6 + len(auth_key)
        mid_a = whole[mid_start : mid_start + mid_a_len]
        tail_b = whole[mid_start + mid_a_len : -6]
        self._head = head
        self._mid = mid_a
        self._tail_b = tail_b
        self._mid_tail = mid_a + tail_b
        #: bytes of everything but the payload body and the correlation id chunk's body
        self._fixed = len(whole)
        # one pack per packet up to the chunk header before the variable part (with a
        # correlation id: its header; without: the payload's), then a join
        self._cid_pack = struct.Struct(f"!4sH{len(head)}s20s{len(mid_a)}sHHH").pack
        self._plain_pack = struct.Struct(f"!4sH{len(head)}s20s{len(mid_a) + len(tail_b)}sHHH").pack
        #: the chunks after the correlation id, up to the payload's length
        self._tail_pl = tail_b + b"\x00\x00\x00\x0f"
        self._parts = (head, mid_a, self._mid_tail, self._tail_pl, self._fixed)

    @property
    def packet(self) -> HepPacket:
        """The template's fields as a packet (timestamp 0, empty payload)."""
        return self._packet

    @property
    def parts(self) -> tuple[bytes, bytes, bytes, bytes, int]:
        """What a packet of this template is made of besides the magic, its length, the
        timestamp chunks, the correlation id and the payload, for an encoder elsewhere (the
        tracer's C fast path): (chunks 0x01..0x08, chunks 0x0b..0x0e, the same followed by
        0x12 and 0x13, chunks 0x12 and 0x13 followed by the payload chunk's vendor and type,
        `fixed_size`). `encode_at` writes, without a correlation id: HEP3 | total length |
        parts[0] | timestamp chunks | parts[2] | 0x0000 0x000f | payload length + 6 | payload;
        with one: HEP3 | total length | parts[0] | timestamp chunks | parts[1] | 0x0000
        0x0011 | id length + 6 | id | parts[3] | payload length + 6 | payload."""
        return self._parts

    def max_payload(self, correlation_id: bytes | None = None) -> int:
        """The largest payload `encode` accepts with this correlation id."""
        cid = 0 if correlation_id is None else 6 + len(correlation_id)
        return MAX_PACKET - self._fixed - cid

    @property
    def fixed_size(self) -> int:
        """Bytes of a packet besides its payload and its correlation id's body (a correlation
        id adds its chunk header, 6 bytes, too)."""
        return self._fixed

    def encode(
        self, ts_sec: int, ts_usec: int, payload: bytes, correlation_id: bytes | None = None
    ) -> bytes:
        """The packet's bytes. Raises ValueError when a value does not fit the packet."""
        try:
            ts = timestamp_chunks(ts_sec, ts_usec)
        except ValueError:
            self._raise_invalid(ts_sec, ts_usec, payload, correlation_id)
            raise  # pragma: no cover - _raise_invalid always raises
        return self.encode_at(ts, payload, correlation_id)

    def encode_at(self, ts: bytes, payload: bytes, correlation_id: bytes | None = None) -> bytes:
        """The packet's bytes, its timestamp chunks from `timestamp_chunks`. Raises ValueError
        when the payload or the correlation id does not fit the packet."""
        n = len(payload)
        try:
            if correlation_id is None:
                return (
                    self._plain_pack(
                        MAGIC,
                        self._fixed + n,
                        self._head,
                        ts,
                        self._mid_tail,
                        0,
                        0x0F,
                        6 + n,
                    )
                    + payload
                )
            c = len(correlation_id)
            return b"".join(
                (
                    self._cid_pack(
                        MAGIC, self._fixed + n + 6 + c, self._head, ts, self._mid, 0, 0x11, 6 + c
                    ),
                    correlation_id,
                    self._tail_pl,
                    (6 + n).to_bytes(2, "big"),
                    payload,
                )
            )
        except _OVERFLOW:
            sec, usec = _TS.unpack(ts)[3::4]
            self._raise_invalid(sec, usec, payload, correlation_id)
            raise  # pragma: no cover - _raise_invalid always raises

    def _raise_invalid(
        self, ts_sec: int, ts_usec: int, payload: bytes, correlation_id: bytes | None
    ) -> None:
        if correlation_id is not None and len(correlation_id) > MAX_PACKET - self._fixed - 6:
            raise ValueError(f"a {len(correlation_id)}-byte correlation id does not fit")
        if len(payload) > self.max_payload(correlation_id):
            raise ValueError(
                f"a {len(payload)}-byte payload does not fit: "
                f"at most {self.max_payload(correlation_id)} bytes with this template"
            )
        HepPacket(
            src_ip=self._packet.src_ip,
            dst_ip=self._packet.dst_ip,
            src_port=0,
            dst_port=0,
            ts_sec=ts_sec,
            ts_usec=ts_usec,
            ip_proto=0,
            payload=payload,
            correlation_id=correlation_id,
        )
        raise ValueError("the values do not fit the packet")  # pragma: no cover

    def swapped(self) -> PacketTemplate:
        """The template of the opposite direction (source and destination exchanged)."""
        p = self._packet
        return PacketTemplate(
            src_ip=p.dst_ip,
            dst_ip=p.src_ip,
            src_port=p.dst_port,
            dst_port=p.src_port,
            ip_proto=p.ip_proto,
            proto_type=p.proto_type,
            capture_id=p.capture_id,
            family=p.family,
            keep_alive=p.keep_alive,
            auth_key=p.auth_key,
            vlan=p.vlan,
            node_name=p.node_name,
        )


class StreamDecoder:
    """Splits a TCP/TLS byte stream into HEPv3 packets, framed by the 6-byte header.

    A framing error (bad magic, a length below 6) breaks the stream for good: that call and
    every later one raise `HepDecodeError`, and the connection should be closed.
    """

    __slots__ = ("_buf", "_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: HepDecodeError | None = None

    @property
    def pending(self) -> int:
        """Bytes received and not yet part of a complete packet."""
        return len(self._buf)

    def _pop(self) -> bytes | None:
        """Remove and return the first complete frame, or None when there is none yet."""
        buf = self._buf
        if not buf:
            return None
        err = _header_error(buf)
        length = 0
        if err is None and len(buf) >= 6:
            length = (buf[4] << 8) | buf[5]
            if length < 6:
                err = HepDecodeError(f"frame length {length} is below 6", offset=4)
        if err is not None:
            self._error = err
            raise err
        if len(buf) < 6 or len(buf) < length:
            return None
        frame = bytes(buf[:length])
        del buf[:length]
        return frame

    def frames(self, data: bytes) -> list[bytes]:
        """Add `data`; return the complete frames (undecoded), keeping the rest."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[bytes] = []
        while (frame := self._pop()) is not None:
            out.append(frame)
        return out

    def feed(self, data: bytes) -> list[HepPacket]:
        """Add `data`; return the packets it completes.

        A well-framed packet that does not decode raises `HepDecodeError` and is dropped; when
        good packets came before it in the same call, they are returned first and the error is
        raised by the next call (`feed(b"")`). The stream stays usable after such an error.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[HepPacket] = []
        while (frame := self._pop()) is not None:
            try:
                out.append(decode(frame))
            except HepDecodeError:
                if not out:
                    raise
                self._buf[:0] = frame
                break
        return out
