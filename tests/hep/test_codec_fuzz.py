"""Fuzzing the decoder: random bytes, mutated packets, random chunk soups, and the kept corpus.

Only HepDecodeError may escape `decode`, and whatever it accepts must be read exactly: an
independent chunk walker checks every accepted packet field by field.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hep.codec import CHUNK_NAMES, HepDecodeError, HepPacket, StreamDecoder, decode, encode
from tests.hep.strategies import packets

CORPUS = Path(__file__).parent / "corpus"
FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def check_exact(data: bytes, p: HepPacket) -> None:
    """`p` is exactly what `data` says, chunk by chunk."""
    assert struct.unpack("!H", data[4:6])[0] == len(data)
    seen: dict[int, bytes] = {}
    unknown = []
    off = 6
    while off < len(data):
        vendor, ctype, length = struct.unpack_from("!HHH", data, off)
        body = data[off + 6 : off + length]
        if vendor == 0 and ctype in CHUNK_NAMES:
            assert ctype not in seen
            seen[ctype] = body
        else:
            unknown.append((vendor, ctype, body))
        off += length
    assert off == len(data)

    def num(ctype: int) -> int | None:
        return int.from_bytes(seen[ctype], "big") if ctype in seen else None

    src = seen.get(0x03) or seen[0x05]
    dst = seen.get(0x04) or seen[0x06]
    # the same address (the text may differ: glibc's inet_ntop writes ::1.0.0.0 where
    # ipaddress writes ::100:0)
    assert ipaddress.ip_address(p.src_ip) == ipaddress.ip_address(src)
    assert ipaddress.ip_address(p.dst_ip) == ipaddress.ip_address(dst)
    assert p.family == num(0x01)
    assert p.ip_proto == num(0x02)
    assert (p.src_port, p.dst_port) == (num(0x07), num(0x08))
    assert (p.ts_sec, p.ts_usec) == (num(0x09), num(0x0A))
    assert (p.proto_type, p.capture_id) == (num(0x0B), num(0x0C))
    assert (p.keep_alive, p.vlan) == (num(0x0D), num(0x12))
    assert p.auth_key == seen.get(0x0E)
    assert p.correlation_id == seen.get(0x11)
    assert p.node_name == seen.get(0x13)
    assert p.payload == seen[0x0F]
    assert [tuple(c) for c in p.unknown] == unknown
    assert decode(encode(p)) == p


def decode_or_error(data: bytes) -> None:
    try:
        p = decode(data)
    except HepDecodeError as e:
        assert str(e)
        return
    check_exact(data, p)


@given(st.binary(max_size=400))
@FUZZ
def test_random_bytes(data: bytes) -> None:
    decode_or_error(data)


@given(st.binary(max_size=400))
@FUZZ
def test_random_chunk_area_with_a_correct_header(body: bytes) -> None:
    decode_or_error(b"HEP3" + struct.pack("!H", 6 + len(body)) + body)


chunk_types = st.one_of(st.integers(0, 0x14), st.integers(0, 0xFFFF))


@st.composite
def chunk_soups(draw: st.DrawFn) -> bytes:
    """Plausible packets: a random selection of chunks, sizes mostly right."""
    parts = []
    for _ in range(draw(st.integers(0, 16))):
        ctype = draw(chunk_types)
        vendor = draw(st.sampled_from([0, 0, 0, 2, 0xFFFF]))
        size = draw(st.sampled_from([0, 1, 2, 4, 16]) | st.integers(0, 40))
        body = draw(st.binary(min_size=size, max_size=size))
        length = draw(st.just(6 + size) | st.integers(0, 80))
        parts.append(struct.pack("!HHH", vendor, ctype, length) + body)
    body = b"".join(parts)
    total = draw(st.just(6 + len(body)) | st.integers(0, 0xFFFF))
    return b"HEP3" + struct.pack("!H", total) + body


@given(chunk_soups())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_chunk_soups(data: bytes) -> None:
    decode_or_error(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(packets())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "u16", "delete"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "u16" and len(data) >= i + 2:
            data[i : i + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


@given(mutated())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_packets(data: bytes) -> None:
    decode_or_error(data)


@given(st.lists(mutated() | st.binary(max_size=64), max_size=4))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_stream_decoder_on_hostile_streams(pieces: list[bytes]) -> None:
    d = StreamDecoder()
    for piece in pieces:
        try:
            for p in d.feed(piece):
                assert isinstance(p, HepPacket)
        except HepDecodeError:
            pass
    assert d.pending <= 65535 + 64


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.hex"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.stem)
def test_corpus(path: Path) -> None:
    """Each file: `# expect: ok` or `# expect: error <text in the message>`, then hex."""
    lines = path.read_text().splitlines()
    expect = next(line for line in lines if line.startswith("# expect:"))[len("# expect:") :]
    data = bytes.fromhex("".join(line for line in lines if not line.startswith("#")))
    kind, _, text = expect.strip().partition(" ")
    if kind == "ok":
        check_exact(data, decode(data))
    else:
        with pytest.raises(HepDecodeError) as info:
            decode(data)
        assert text in str(info.value)


def test_corpus_is_there() -> None:
    assert len(corpus_files()) >= 10
