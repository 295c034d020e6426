"""The tracer's fast path in C (tlstrace/trace/_fastpath.c) does what its Python twin
(tlstrace/trace/fastpath.py) does: the same packets, the same index where it stops, the same
Call-IDs remembered; and the twin builds what PacketTemplate.encode_at builds. In-memory."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hep.codec import PacketTemplate, decode, timestamp_chunks
from tlstrace.sip.peek import call_id
from tlstrace.trace import events, fastpath
from tlstrace.trace.fastpath import Parts, Session

fast = pytest.importorskip("tlstrace.trace._fastpath", reason="the C fast path is not built")

TS = timestamp_chunks(1700000000, 123456)
V4 = PacketTemplate(src_ip="192.0.2.1", dst_ip="127.0.0.1", src_port=5061, dst_port=5061, ip_proto=6)  # fmt: skip  # noqa: E501
V6 = PacketTemplate(src_ip="2001:db8::1", dst_ip="::1", src_port=40000, dst_port=5060, ip_proto=22, capture_id=7, auth_key=b"secret", node_name=b"node-1", vlan=12, keep_alive=30)  # fmt: skip  # noqa: E501
RECORD = PacketTemplate(src_ip="192.0.2.1", dst_ip="127.0.0.1", src_port=5061, dst_port=5061, ip_proto=6, proto_type=100)  # fmt: skip  # noqa: E501
HEAD = events.session_record_head('{"type":"tls-session","connection_id":"1"')
#: a record head that a long Call-ID takes past hep_max_packet 1024
LONG_HEAD = events.session_record_head('{"type":"tls-session","keylog":"' + "k" * 700 + '"')

pieces = st.sampled_from(
    [
        b"\r\n",
        b"\r\n\r\n",
        b"Call-ID: a@b",
        b"\r\nCall-ID: c1@x",
        b"\r\ni: c2",
        b"\r\ncall-id : c3@x\r\n",
        b"\r\nCall-ID: " + b"m" * 250,
        b'\r\nCall-ID: q"2',
        b"call-id:\tx",
        b"i: short",
        b"I :  y ",
        b"CALL-ID:",
        b"Call-Id : ",
        b"Call-ID: " + b"L" * 300,
        b'Call-ID: q"uote\\',
        b"Call-ID: \xc3\xa9t\xc3\xa9",
        b"Call-ID: c\x00nul",
        b"X-Tlstrace-Truncated: 1",
        b"X-Tlstrace-Truncate",
        b"Via: z",
        b"\r",
        b"\n",
        b" ",
        b"\t",
        b"i",
        b"x",
        b"y" * 700,
    ]
)
messages = st.one_of(
    st.lists(pieces, max_size=12).map(lambda p: b"INVITE sip:x SIP/2.0" + b"".join(p)),
    st.lists(pieces, max_size=12).map(b"".join),
    st.sampled_from([b"", b"\r\n\r\n", b"\r\n", b" x"]),
)


@given(st.lists(pieces, max_size=14).map(b"".join), st.sampled_from([V4, V6]), st.booleans())
@settings(max_examples=300)
def test_the_twin_encodes_as_the_template(payload: bytes, tpl: PacketTemplate, cid: bool) -> None:
    correlation = (call_id(b"\r\n" + payload) or b"c") if cid else None
    got = fastpath._encode(tpl.parts, TS, correlation, payload)
    assert got == tpl.encode_at(TS, payload, correlation)
    assert decode(got).payload == payload


@given(
    st.lists(messages, max_size=8),
    st.integers(0, 3),
    st.sampled_from([None, V4, V6]),
    st.booleans(),
    st.sampled_from([1500, 1024, 10_000, 65535]),
    st.booleans(),
    st.lists(messages, max_size=4),
    st.integers(1, 4),
    st.sampled_from([1024, 1100, 65507]),
    st.sampled_from([HEAD, LONG_HEAD]),
)
@settings(max_examples=1500, deadline=None)
def test_c_does_what_python_does(
    chunks: list[bytes],
    start: int,
    second: PacketTemplate | None,
    second_first: bool,
    room: int,
    sessions: bool,
    known: list[bytes],
    seen_max: int,
    max_packet: int,
    head: bytes,
) -> None:
    session: Session | None = (head, RECORD.parts) if sessions else None
    second_parts: Parts | None = second.parts if second is not None else None
    results = []
    for encode_batch in (fastpath.encode_batch, fast.encode_batch):
        seen: OrderedDict[int, None] = OrderedDict()
        for m in known:  # Call-IDs already seen, some of them
            c = call_id(m)
            if c is not None:
                seen[hash(c)] = None
        out: list[bytes] = []
        stop = encode_batch(
            chunks, start, TS, V4.parts, second_parts, second_first, room, session, seen,
            seen_max, max_packet, out,
        )  # fmt: skip
        results.append((stop, out, list(seen)))
    assert results[0] == results[1]
    stop, out, _ = results[0]
    # (the bound is the larger template's: a V6 second packet carries longer addresses)
    fixed = max(t.fixed_size for t in (V4, second) if t is not None)
    for p in out:
        assert len(p) <= max(max_packet, fixed + room + 6 + 256)
        decode(p)


def test_plain_messages_take_the_fast_path_with_their_session_record() -> None:
    invite = (
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\n"
        b"Call-ID: plain-1@example.com \t\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    ok = invite.replace(b"INVITE sip:bob@example.com SIP/2.0", b"SIP/2.0 200 OK")
    seen: OrderedDict[int, None] = OrderedDict()
    out: list[bytes] = []
    chunks = [invite, b"\r\n\r\n", ok]
    stop = fast.encode_batch(
        chunks, 0, TS, V4.parts, V6.parts, True, 60000, (HEAD, RECORD.parts), seen, 1024,
        65507, out,
    )  # fmt: skip
    assert stop == 3
    cid = b"plain-1@example.com"
    assert list(seen) == [hash(cid)]
    assert out == [
        V6.encode_at(TS, invite, cid),
        V4.encode_at(TS, invite, cid),
        RECORD.encode_at(TS, events.session_record_at(HEAD, "", cid), cid),
        V6.encode_at(TS, ok, cid),
        V4.encode_at(TS, ok, cid),
    ]
