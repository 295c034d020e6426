"""Generated cases: streams split at every byte boundary, hypothesis-made message streams
through the core, and the framer's batch path against its event path."""

from __future__ import annotations

import itertools
import ssl

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.harness import FakeClock, Pki, Wire, make_ctx
from tlstrace.sip.framing import (
    WHITESPACE,
    Dropped,
    FramingError,
    KeepAlive,
    Message,
    Ping,
    SipFramer,
)

METHODS = ["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "MESSAGE", "NOTIFY", "FOO"]


def sip(method: str, body: bytes, n: int) -> bytes:
    start = "SIP/2.0 200 OK" if method == "2xx" else f"{method} sip:u{n}@example.com SIP/2.0"
    return (
        f"{start}\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK{n}\r\nCall-ID: {n}@x\r\n"
        f"CSeq: {n} {method}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def wire_for(pki: Pki, **cfg: object) -> Wire:
    ctx = make_ctx(FakeClock(), tls_keepalive_rate=0, **cfg)
    return Wire(
        ctx,
        pki.server_contexts(pki.domain("a")),
        pki.client_context(version=ssl.TLSVersion.TLSv1_3),
    )


def test_ciphertext_split_at_every_byte(pki: Pki) -> None:
    wire = wire_for(pki)
    msgs = [sip("INVITE", b"v=0\r\n" * 20, 1), sip("2xx", b"", 2)]
    first = wire.client_send(msgs[0]) + wire.client_send(msgs[1])
    size = len(first)
    wire.to_relay(first)
    wire.forwarded.clear()
    for i in range(1, size):
        raw = wire.client_send(msgs[0]) + wire.client_send(msgs[1])
        assert len(raw) == size
        wire.to_relay(raw[:i])
        wire.to_relay(raw[i:])
        assert wire.forwarded == msgs, i
        assert wire.close_reason is None
        wire.forwarded.clear()


def test_plaintext_split_across_records_at_every_byte(pki: Pki) -> None:
    wire = wire_for(pki)
    stream = sip("MESSAGE", b"hello" * 30, 1) + b"\r\n" + sip("BYE", b"", 2)
    msgs = [sip("MESSAGE", b"hello" * 30, 1), sip("BYE", b"", 2)]
    for j in range(1, len(stream)):
        wire.to_relay(wire.client_send(stream[:j]) + wire.client_send(stream[j:]))
        assert [c for c in wire.forwarded if c[0] not in WHITESPACE] == msgs, j
        wire.forwarded.clear()
    assert wire.close_reason is None


message = st.builds(
    sip,
    st.sampled_from([*METHODS, "2xx"]),
    st.binary(max_size=400),
    st.integers(min_value=0, max_value=10**6),
)
keepalive = st.sampled_from([b"\r\n", b"\r\n\r\n", b" ", b"\r\n\r\n\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int], list[int]]:
    msgs = draw(st.lists(message, min_size=1, max_size=8))
    stream = b""
    for m in msgs:
        if draw(st.booleans()):
            stream += draw(keepalive)
        stream += m
    cuts = sorted(set(draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))))
    reads = draw(st.lists(st.integers(1, 5000), max_size=12))
    return msgs, stream, cuts, reads


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(streams())
def test_generated_streams_arrive_whole_and_in_order(
    pki: Pki, case: tuple[list[bytes], bytes, list[int], list[int]]
) -> None:
    msgs, stream, cuts, reads = case
    wire = wire_for(pki, tls_max_msg_chunks=1024)
    bounds = [0, *cuts, len(stream)]
    raw = b"".join(wire.client_send(stream[a:b]) for a, b in itertools.pairwise(bounds))
    offsets = sorted({min(r, len(raw)) for r in reads} | {len(raw)})
    start = 0
    for end in offsets:
        if end > start:
            wire.to_relay(raw[start:end])
            start = end
        wire.client_in(wire.from_relay())  # pongs
    assert wire.close_reason is None
    assert wire.backend_msgs == msgs
    assert wire.forwarded_msgs == len(msgs) == wire.conn.msgs_in
    assert set(wire.client_got) <= {0x0D, 0x0A}
    assert wire.core.partial_since == 0.0


def by_events(framer: SipFramer, chunks: list[bytes]) -> tuple[list[bytes], int, int, int, str]:
    out: list[bytes] = []
    pings = relayed = dropped = 0
    for chunk in chunks:
        for ev in framer.feed(chunk):
            if isinstance(ev, Message):
                out.append(ev.data)
            elif isinstance(ev, KeepAlive):
                out.append(ev.data)
                relayed += 1
            elif isinstance(ev, Ping):
                pings += 1
            elif isinstance(ev, Dropped):
                dropped += 1
            else:
                assert isinstance(ev, FramingError)
                return out, pings, relayed, dropped, ev.kind.value
    return out, pings, relayed, dropped, ""


def by_batch(framer: SipFramer, chunks: list[bytes]) -> tuple[list[bytes], int, int, int, str]:
    out: list[bytes] = []
    for chunk in chunks:
        if framer.feed_into(chunk, out) < 0:
            assert framer.error is not None
            return out, framer.pings, framer.relayed, framer.dropped, framer.error.kind.value
    return out, framer.pings, framer.relayed, framer.dropped, ""


pieces = st.lists(
    st.one_of(
        message,
        keepalive,
        st.sampled_from(
            [
                b"BYE sip:x SIP/2.0\r\nContent-Length: 2\r\nl: 2\r\n\r\nab",
                b"garbage\r\n\r\n",
                b"OPTIONS sip:x SIP/2.0\r\n\r\n",
                b"\x00",
            ]
        ),
    ),
    max_size=6,
)


@settings(max_examples=2000, deadline=None)
@given(
    pieces, st.lists(st.integers(0, 3000), max_size=8), st.booleans(), st.booleans(), st.booleans()
)
def test_the_batch_path_agrees_with_the_events(
    parts: list[bytes], cuts: list[int], strict: bool, crlf_drop: bool, pingpong: bool
) -> None:
    stream = b"".join(parts)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]

    def framer() -> SipFramer:
        return SipFramer(
            max_msg_size=2000, strict=strict, crlf_drop=crlf_drop, pingpong=pingpong, max_chunks=3
        )

    assert by_batch(framer(), chunks) == by_events(framer(), chunks)
