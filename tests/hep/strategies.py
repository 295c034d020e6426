"""Hypothesis strategies for HEP packets."""

from __future__ import annotations

from typing import Literal

from hypothesis import strategies as st

from hep.codec import CHUNK_NAMES, HepChunk, HepPacket

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
octets = st.binary(max_size=48)


@st.composite
def addresses(draw: st.DrawFn) -> tuple[str, str]:
    version: Literal[4, 6] = draw(st.sampled_from([4, 6]))
    a = draw(st.ip_addresses(v=version))
    b = draw(st.ip_addresses(v=version))
    return str(a), str(b)


unknown_chunks = st.lists(
    st.builds(HepChunk, u16, u16, octets).filter(
        lambda c: not (c.vendor == 0 and c.type in CHUNK_NAMES)
    ),
    max_size=3,
).map(tuple)


@st.composite
def packets(draw: st.DrawFn, *, unknown: bool = True) -> HepPacket:
    src, dst = draw(addresses())
    return HepPacket(
        src_ip=src,
        dst_ip=dst,
        src_port=draw(u16),
        dst_port=draw(u16),
        ts_sec=draw(u32),
        ts_usec=draw(st.integers(0, 999_999)),
        ip_proto=draw(u8),
        proto_type=draw(u8),
        capture_id=draw(u32),
        keep_alive=draw(st.none() | u16),
        auth_key=draw(st.none() | octets),
        correlation_id=draw(st.none() | octets),
        vlan=draw(st.none() | u16),
        node_name=draw(st.none() | octets),
        payload=draw(st.binary(max_size=600)),
        unknown=draw(unknown_chunks) if unknown else (),
    )
