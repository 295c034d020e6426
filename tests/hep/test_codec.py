"""HEPv3 codec: golden vector, round trips, chunk order, total length, every decode error."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hep.codec import (
    MAX_PACKET,
    HepChunk,
    HepDecodeError,
    HepPacket,
    PacketTemplate,
    StreamDecoder,
    decode,
    encode,
    timestamp_chunks,
)
from tests.hep.strategies import packets

# hep.md §1.5: the worked example of the HEP3 specification (rev. 37)
GOLDEN = bytes.fromhex(
    "484550330071"
    "00000001000702"
    "00000002000711"
    "00000003000ad4ca0001"
    "00000004000a527400d3"
    "0000000700082eea"
    "00000008000813c4"
    "00000009000a4e4982cb"
    "0000000a000a0001d4c0"
    "0000000b000701"
    "0000000c000a000000e4"
    "0000000f0014494e56495445207369703a626f62"
)
GOLDEN_PACKET = HepPacket(
    family=2,
    ip_proto=17,
    src_ip="212.202.0.1",
    dst_ip="82.116.0.211",
    src_port=12010,
    dst_port=5060,
    ts_sec=1313440459,
    ts_usec=120000,
    proto_type=1,
    capture_id=228,
    payload=b"INVITE sip:bob",
)


def chunk(ctype: int, body: bytes, vendor: int = 0, length: int | None = None) -> bytes:
    return struct.pack("!HHH", vendor, ctype, 6 + len(body) if length is None else length) + body


def hep(*chunks: bytes, total: int | None = None, magic: bytes = b"HEP3") -> bytes:
    body = b"".join(chunks)
    return magic + struct.pack("!H", 6 + len(body) if total is None else total) + body


def walk(data: bytes) -> list[tuple[int, int, bytes]]:
    """The chunks of a packet, read independently of the codec."""
    out = []
    off = 6
    while off < len(data):
        vendor, ctype, length = struct.unpack_from("!HHH", data, off)
        out.append((vendor, ctype, data[off + 6 : off + length]))
        off += length
    assert off == len(data)
    return out


def total_length(data: bytes) -> int:
    return int(struct.unpack("!H", data[4:6])[0])


# the chunks of GOLDEN, to rebuild variants
BASE = walk(GOLDEN)


def rebuild(
    drop: int | None = None, replace: dict[int, bytes] | None = None, extra: tuple[bytes, ...] = ()
) -> bytes:
    parts = []
    for vendor, ctype, body in BASE:
        if ctype == drop:
            continue
        parts.append(chunk(ctype, (replace or {}).get(ctype, body), vendor))
    return hep(*parts[:-1], *extra, parts[-1])


# ------------------------------------------------------------------ golden
def test_golden_vector_decodes_to_the_spec_values() -> None:
    assert len(GOLDEN) == 113 == total_length(GOLDEN)
    assert decode(GOLDEN) == GOLDEN_PACKET


def test_golden_vector_encodes_byte_for_byte() -> None:
    assert encode(GOLDEN_PACKET) == GOLDEN


def test_golden_vector_from_a_template() -> None:
    t = PacketTemplate(
        src_ip="212.202.0.1",
        dst_ip="82.116.0.211",
        src_port=12010,
        dst_port=5060,
        ip_proto=17,
        proto_type=1,
        capture_id=228,
    )
    assert t.encode(1313440459, 120000, b"INVITE sip:bob") == GOLDEN


# ------------------------------------------------------------ round trips
@given(packets())
@settings(max_examples=200)
def test_decode_of_encode_is_identity(p: HepPacket) -> None:
    data = encode(p)
    assert total_length(data) == len(data)
    assert decode(data) == p


@given(packets())
def test_chunk_order_and_no_vendor_chunks(p: HepPacket) -> None:
    data = encode(p)
    types = [t for v, t, _ in walk(data)]
    addr = [3, 4] if p.family == 2 else [5, 6]
    fixed = [1, 2, *addr, 7, 8, 9, 10, 11, 12]
    assert types[:10] == fixed
    optional = [
        t
        for t, present in (
            (0x0D, p.keep_alive is not None),
            (0x0E, p.auth_key is not None),
            (0x11, p.correlation_id is not None),
            (0x12, p.vlan is not None),
            (0x13, p.node_name is not None),
        )
        if present
    ]
    assert types[10 : 10 + len(optional)] == optional
    assert walk(data)[10 + len(optional) : -1] == [tuple(c) for c in p.unknown]
    assert types[-1] == 0x0F
    if not p.unknown:
        assert all(v == 0 for v, _, _ in walk(data))
        assert 0x10 not in types


@given(packets(unknown=False), st.none() | st.binary(max_size=64))
@settings(max_examples=200)
def test_template_is_byte_identical_to_encode(p: HepPacket, cid: bytes | None) -> None:
    t = PacketTemplate(
        src_ip=p.src_ip,
        dst_ip=p.dst_ip,
        src_port=p.src_port,
        dst_port=p.dst_port,
        ip_proto=p.ip_proto,
        proto_type=p.proto_type,
        capture_id=p.capture_id,
        family=p.family,
        keep_alive=p.keep_alive,
        auth_key=p.auth_key,
        vlan=p.vlan,
        node_name=p.node_name,
    )
    expected = encode(dataclasses.replace(p, correlation_id=cid))
    got = t.encode(p.ts_sec, p.ts_usec, p.payload, cid)
    assert got == expected
    assert t.encode_at(timestamp_chunks(p.ts_sec, p.ts_usec), p.payload, cid) == expected
    assert t.fixed_size + len(p.payload) + (0 if cid is None else 6 + len(cid)) == len(got)
    assert total_length(got) == len(got)
    back = t.swapped().encode(p.ts_sec, p.ts_usec, p.payload, cid)
    swapped = decode(back)
    assert (swapped.src_ip, swapped.src_port) == (p.dst_ip, p.dst_port)
    assert (swapped.dst_ip, swapped.dst_port) == (p.src_ip, p.src_port)


def test_unknown_chunks_survive_decode_and_reencode() -> None:
    vendor_payload = chunk(0x0F, b"not the payload", vendor=2)  # Kamailio vendor id
    compressed = chunk(0x10, b"\x1f\x8b gzip")
    future = chunk(0x20, b"\x00\x05")
    data = rebuild(extra=(vendor_payload, compressed, future))
    p = decode(data)
    assert p.payload == b"INVITE sip:bob"
    assert p.unknown == (
        HepChunk(2, 0x0F, b"not the payload"),
        HepChunk(0, 0x10, b"\x1f\x8b gzip"),
        HepChunk(0, 0x20, b"\x00\x05"),
    )
    again = encode(p)
    assert decode(again) == p
    assert again == data  # same order: the unknown chunks sat just before the payload


def test_eep3_magic_is_read_and_hep3_is_written() -> None:
    p = decode(b"EEP3" + GOLDEN[4:])
    assert p == GOLDEN_PACKET
    assert encode(p)[:4] == b"HEP3"


def test_total_length_of_the_largest_packet() -> None:
    t = PacketTemplate(src_ip="::1", dst_ip="::2", src_port=1, dst_port=2, ip_proto=6)
    biggest = t.encode(1, 2, b"x" * t.max_payload())
    assert len(biggest) == MAX_PACKET == total_length(biggest)
    assert decode(biggest).payload == b"x" * t.max_payload()
    with pytest.raises(ValueError, match="does not fit"):
        t.encode(1, 2, b"x" * (t.max_payload() + 1))
    with pytest.raises(ValueError, match=r"too long|would be"):
        HepPacket(
            src_ip="::1",
            dst_ip="::2",
            src_port=1,
            dst_port=2,
            ts_sec=1,
            ts_usec=2,
            ip_proto=6,
            payload=b"x" * (t.max_payload() + 1),
        )


# ---------------------------------------------------------- packet checks
@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"family": 10}, ValueError, "does not match IPv4"),
        ({"dst_ip": "::1"}, ValueError, "different IP versions"),
        ({"src_ip": "999.1.1.1"}, ValueError, "not an IPv4 or IPv6"),
        ({"src_ip": "fe80::1%eth0", "dst_ip": "::1", "family": 0}, ValueError, "scope"),
        ({"ts_usec": 1_000_000}, ValueError, "microsecond"),
        ({"ts_sec": -1}, ValueError, "0x0009"),
        ({"src_port": 65536}, ValueError, "0x0007"),
        ({"capture_id": 1 << 32}, ValueError, "0x000c"),
        ({"vlan": 1 << 16}, ValueError, "0x0012"),
        ({"proto_type": 256}, ValueError, "0x000b"),
        ({"node_name": "relay"}, TypeError, "node_name must be bytes"),
        ({"payload": "text"}, TypeError, "payload must be bytes"),
        ({"unknown": ((0, 0x0F, b"x"),)}, ValueError, "set the field instead"),
    ],
)
def test_invalid_packets_are_refused(
    changes: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        dataclasses.replace(GOLDEN_PACKET, **changes)  # type: ignore[arg-type]


def test_addresses_are_normalised_and_family_derived() -> None:
    p = HepPacket(
        src_ip="2001:DB8:0::1",
        dst_ip="::FFFF:10.0.0.1",
        src_port=1,
        dst_port=2,
        ts_sec=0,
        ts_usec=0,
        ip_proto=17,
        payload=b"",
    )
    assert (p.src_ip, p.family) == ("2001:db8::1", 10)
    assert decode(encode(p)) == p
    assert dataclasses.replace(p, unknown=[(7, 1, b"x")]).unknown == (HepChunk(7, 1, b"x"),)  # type: ignore[arg-type]


# ---------------------------------------------------------- decode errors
def expect_error(data: bytes, match: str, chunk_type: int | None = None) -> HepDecodeError:
    with pytest.raises(HepDecodeError, match=match) as info:
        decode(data)
    if chunk_type is not None:
        assert info.value.chunk_type == chunk_type
        assert f"0x{chunk_type:04x}" in str(info.value)
    return info.value


@pytest.mark.parametrize("delta", [-1, 1, -50, 10, 200])
def test_total_length_must_equal_the_bytes_given(delta: int) -> None:
    data = hep(*[chunk(t, b, v) for v, t, b in BASE], total=113 + delta)
    err = expect_error(data, f"total length field is {113 + delta} but 113 bytes")
    assert err.offset == 4


def test_total_length_checked_against_extra_bytes_too() -> None:
    expect_error(GOLDEN + b"\x00", "total length field is 113 but 114")
    expect_error(GOLDEN[:-1], "total length field is 113 but 112")


@pytest.mark.parametrize("data", [b"", b"H", b"HEP", b"HEP3", b"HEP3\x00"])
def test_truncated_header(data: bytes) -> None:
    expect_error(data, "truncated header")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"SIP/2.0 200 OK\r\n", "bad magic"),
        (b"\x02\x10\x02\x11" + b"\x00" * 20, "HEPv2"),
        (b"\x01\x10\x02\x11" + b"\x00" * 20, "HEPv1"),
        (b"HEP2" + GOLDEN[4:], "bad magic"),
    ],
)
def test_not_hepv3(data: bytes, match: str) -> None:
    expect_error(data, match)


FIXED_SIZES = {
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


@pytest.mark.parametrize("ctype", sorted(FIXED_SIZES))
@pytest.mark.parametrize("delta", [-1, 1])
def test_fixed_size_chunk_of_the_wrong_size(ctype: int, delta: int) -> None:
    size = FIXED_SIZES[ctype] + delta
    if size < 0:
        return
    in_base = {t for _, t, _ in BASE}
    body = b"\x01" * size
    if ctype in in_base:
        data = rebuild(replace={ctype: body})
    else:
        data = rebuild(extra=(chunk(ctype, body),))
    err = expect_error(
        data, f"wrong size: .*{size}-byte body, expected {FIXED_SIZES[ctype]}", chunk_type=ctype
    )
    assert err.offset is not None and data[err.offset + 3] == ctype


def test_truncated_chunk() -> None:
    # the last chunk claims 10 more bytes than the packet has (total length still right)
    data = GOLDEN[:-20] + chunk(0x0F, b"INVITE sip:bob", length=30)
    expect_error(data, "truncated chunk: chunk 0x000f .* length 30 but only 20", chunk_type=0x0F)


@pytest.mark.parametrize("left", [1, 3, 5])
def test_truncated_chunk_header(left: int) -> None:
    expect_error(hep(*[chunk(t, b) for _, t, b in BASE], b"\x00" * left), "truncated chunk header")


@pytest.mark.parametrize("length", [0, 1, 5])
def test_zero_or_short_length_chunk(length: int) -> None:
    data = rebuild(extra=(chunk(0x0E, b"", length=length) + b"\x00" * 6,))
    expect_error(
        data, "zero-length chunk" if length == 0 else f"chunk length {length}", chunk_type=0x0E
    )


def test_more_than_one_payload() -> None:
    expect_error(rebuild(extra=(chunk(0x0F, b"second"),)), "more than one payload", chunk_type=0x0F)


@pytest.mark.parametrize("ctype", [0x01, 0x07, 0x0C, 0x11, 0x13])
def test_duplicate_chunk(ctype: int) -> None:
    body = b"\x02" if ctype == 0x01 else b"\x00" * FIXED_SIZES.get(ctype, 3)
    data = rebuild(
        extra=(chunk(ctype, body), chunk(ctype, body)) if ctype > 0x0C else (chunk(ctype, body),)
    )
    expect_error(data, "duplicate chunk", chunk_type=ctype)


@pytest.mark.parametrize(
    "ctype", [0x01, 0x02, 0x03, 0x04, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0F]
)
def test_missing_required_chunk(ctype: int) -> None:
    expect_error(rebuild(drop=ctype), "missing", chunk_type=ctype)


def test_address_chunks_must_agree_with_each_other_and_the_family() -> None:
    v6 = b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"
    expect_error(rebuild(extra=(chunk(0x05, v6),)), "both IPv4")
    expect_error(
        rebuild(replace={0x01: b"\x0a"}),
        "0x0001 .* is 10 but the addresses are IPv4",
        chunk_type=0x01,
    )
    no_v4 = [chunk(t, b) for _, t, b in BASE if t not in (3, 4)]
    expect_error(hep(*no_v4), "missing address chunks")
    only_v6_src = [chunk(t, b"\x0a" if t == 1 else b) for _, t, b in BASE if t not in (3, 4)]
    expect_error(
        hep(*only_v6_src[:-1], chunk(0x05, v6), only_v6_src[-1]),
        "missing chunk 0x0006",
        chunk_type=0x06,
    )


def test_microseconds_above_a_second() -> None:
    expect_error(
        rebuild(replace={0x0A: struct.pack("!I", 1_000_000)}), "microsecond", chunk_type=0x0A
    )


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(GOLDEN)) == GOLDEN_PACKET
    assert decode(memoryview(GOLDEN)) == GOLDEN_PACKET


def test_hep_decode_error_is_a_value_error() -> None:
    assert issubclass(HepDecodeError, ValueError)


# ---------------------------------------------------------- stream decoder
@given(st.lists(packets(), min_size=1, max_size=4), st.lists(st.integers(0, 10_000), max_size=8))
@settings(max_examples=50)
def test_stream_decoder_reassembles_any_split(ps: list[HepPacket], cuts: list[int]) -> None:
    stream = b"".join(encode(p) for p in ps)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    d = StreamDecoder()
    got: list[HepPacket] = []
    last = 0
    for point in [*points, len(stream)]:
        got += d.feed(stream[last:point])
        last = point
    assert got == ps
    assert d.pending == 0


def test_stream_decoder_frames_without_decoding() -> None:
    d = StreamDecoder()
    assert d.frames(GOLDEN + GOLDEN[:10]) == [GOLDEN]
    assert d.pending == 10
    assert d.frames(GOLDEN[10:]) == [GOLDEN]


@pytest.mark.parametrize(
    ("junk", "match"),
    [
        (b"INVITE sip:x SIP/2.0\r\n", "bad magic"),
        (b"HEP3\x00\x03", "frame length 3 is below 6"),
        (b"HX", "bad magic"),
    ],
)
def test_stream_decoder_framing_error_is_final(junk: bytes, match: str) -> None:
    d = StreamDecoder()
    assert d.feed(GOLDEN) == [GOLDEN_PACKET]
    with pytest.raises(HepDecodeError, match=match):
        d.feed(junk)
    with pytest.raises(HepDecodeError, match=match):
        d.feed(GOLDEN)


def test_stream_decoder_bad_frame_between_good_ones() -> None:
    bad = rebuild(drop=0x0C)  # well framed, but no capture id
    d = StreamDecoder()
    assert d.feed(GOLDEN + bad + GOLDEN) == [GOLDEN_PACKET]
    with pytest.raises(HepDecodeError, match="missing chunk 0x000c"):
        d.feed(b"")
    assert d.feed(b"") == [GOLDEN_PACKET]  # the stream goes on
    with pytest.raises(HepDecodeError, match="missing chunk 0x000c"):
        d.feed(bad)
    assert d.feed(GOLDEN) == [GOLDEN_PACKET]


def test_encode_at_refuses_what_does_not_fit() -> None:
    t = PacketTemplate(src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2, ip_proto=6)
    ts = timestamp_chunks(1, 2)
    biggest = t.encode_at(ts, b"x" * t.max_payload(b"cid"), b"cid")
    assert len(biggest) == MAX_PACKET == total_length(biggest)
    with pytest.raises(ValueError, match="does not fit"):
        t.encode_at(ts, b"x" * (t.max_payload(b"cid") + 1), b"cid")
    with pytest.raises(ValueError, match="does not fit"):
        t.encode_at(ts, b"x" * (t.max_payload() + 1))
    with pytest.raises(ValueError, match="microsecond"):
        timestamp_chunks(1, 1_000_000)
    with pytest.raises(ValueError, match="does not fit"):
        timestamp_chunks(1 << 32, 0)
    with pytest.raises(ValueError, match="microsecond"):
        t.encode(1, 1_000_000, b"x")
