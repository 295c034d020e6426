"""hep-js (npm), a decoder nobody here wrote, reads what `hep/` encodes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hep.codec import HepPacket, PacketTemplate, encode
from tests.support.hepjs import available, hepjs_decode

pytestmark = pytest.mark.skipif(
    not available(), reason="node or hep-js missing (scripts/install-test-deps.sh)"
)

SIP = (
    "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1\r\n"
    "Call-ID: js@x\r\nCSeq: 1 INVITE\r\nSubject: café\r\nContent-Length: 0\r\n\r\n"
)


def expected(p: HepPacket) -> dict[str, object]:
    rcinfo: dict[str, object] = {
        "protocolFamily": p.family,
        "protocol": p.ip_proto,
        "srcPort": p.src_port,
        "dstPort": p.dst_port,
        "timeSeconds": p.ts_sec,
        "timeUseconds": p.ts_usec,
        "payloadType": p.proto_type,
        "captureId": p.capture_id,
    }
    if p.family == 2:  # hep-js drops the IPv6 address chunks 0x0005/0x0006
        rcinfo |= {"srcIp": p.src_ip, "dstIp": p.dst_ip}
    for key, value in (
        ("capturePass", p.auth_key),
        ("correlation_id", p.correlation_id),
        ("hepNodeName", p.node_name),
    ):
        if value is not None:
            rcinfo[key] = value.decode()
    return {"rcinfo": rcinfo, "payload": p.payload.decode()}


PACKETS = [
    HepPacket(
        src_ip="10.0.0.1",
        dst_ip="192.0.2.200",
        src_port=5061,
        dst_port=5060,
        ts_sec=1700000000,
        ts_usec=123456,
        ip_proto=6,
        proto_type=1,
        capture_id=2001,
        auth_key=b"k3y",
        correlation_id=b"corr-js",
        node_name=b"relay-js",
        keep_alive=30,
        vlan=12,
        payload=SIP.encode(),
    ),
    HepPacket(
        src_ip="127.0.0.1",
        dst_ip="127.0.0.2",
        src_port=0,
        dst_port=65535,
        ts_sec=0xFFFFFFFF,
        ts_usec=999999,
        ip_proto=17,
        proto_type=100,
        capture_id=0xFFFFFFFF,
        correlation_id=b"js@x",
        payload='{"event":"closed\u2028"}'.encode(),
    ),
    HepPacket(
        src_ip="2001:db8::1",
        dst_ip="2001:db8::2",
        src_port=5061,
        dst_port=5060,
        ts_sec=1700000000,
        ts_usec=1,
        ip_proto=6,
        capture_id=5,
        node_name=b"v6",
        payload=SIP.encode(),
    ),
]


def test_hepjs_decodes_every_chunk_it_knows() -> None:
    got = hepjs_decode([encode(p) for p in PACKETS])
    for p, d in zip(PACKETS, got, strict=True):
        assert d == expected(p)
    assert "srcIp" not in got[2]["rcinfo"]  # type: ignore[index]  # documented hep-js limit


def test_hepjs_reads_a_tcp_style_stream_split_by_us() -> None:
    t = PacketTemplate(
        src_ip="10.1.1.1",
        dst_ip="10.1.1.2",
        src_port=5061,
        dst_port=5060,
        ip_proto=6,
        capture_id=9,
        node_name=b"tlstrace",
    )
    frames = [
        t.encode(1700000000 + i, i, f"{SIP}{i}".encode(), f"c{i}".encode()) for i in range(20)
    ]
    got = hepjs_decode(frames)
    assert [d["rcinfo"]["correlation_id"] for d in got] == [f"c{i}" for i in range(20)]  # type: ignore[index]
    assert [d["payload"] for d in got] == [f"{SIP}{i}" for i in range(20)]  # type: ignore[index]


text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(
    st.lists(
        st.tuples(
            st.ip_addresses(v=4),
            st.ip_addresses(v=4),
            st.integers(0, 65535),
            st.integers(0, 999_999),
            text,
            st.none() | text,
            st.none() | text,
        ),
        min_size=1,
        max_size=30,
    )
)
@settings(max_examples=5, deadline=None)
def test_hepjs_agrees_on_random_ipv4_packets(
    rows: list[tuple[object, object, int, int, str, str | None, str | None]],
) -> None:
    packets = [
        HepPacket(
            src_ip=str(a),
            dst_ip=str(b),
            src_port=port,
            dst_port=port,
            ts_sec=1700000000,
            ts_usec=usec,
            ip_proto=17,
            capture_id=port,
            payload=payload.encode(),
            correlation_id=cid.encode() if cid is not None else None,
            node_name=node.encode() if node is not None else None,
        )
        for a, b, port, usec, payload, cid, node in rows
    ]
    got = hepjs_decode([encode(p) for p in packets])
    for p, d in zip(packets, got, strict=True):
        assert d == expected(p)
