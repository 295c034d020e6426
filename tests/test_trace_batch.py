"""The tracer's batch path without sockets: `messages()` sends exactly what `message()` per
message sends, for every kind of chunk (keep-alives, messages that fit, forged marks, long
Call-IDs, oversize messages, messages kept for the backend leg); and the fast pieces it uses
(`call_id`, `session_record_at`) give what the plain ones give."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from hep.codec import decode
from hep.sender import HepSender
from tlstrace.config.load import validate
from tlstrace.relay.connection import Connection
from tlstrace.sip.peek import call_id
from tlstrace.trace import events
from tlstrace.trace.tracer import ConnectionTracer, TraceManager

_REFERENCE = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def reference_call_id(message: bytes) -> bytes | None:
    """The Call-ID peek as it was: bounded to the header section, then one search."""
    end = message.find(b"\r\n\r\n")
    m = _REFERENCE.search(message, 0, end + 2 if end >= 0 else len(message))
    if m is None:
        return None
    return m.group(1).strip(b" \t") or None


pieces = st.sampled_from(
    [
        b"\r\n",
        b"\r\n\r\n",
        b"Call-ID: a@b",
        b"call-id:\tx",
        b"i: short",
        b"I :  y ",
        b"CALL-ID:",
        b"Call-Id : ",
        b"Via: z",
        b"\r",
        b"\n",
        b" ",
        b"i",
        b"x",
    ]
)


@given(st.lists(pieces, max_size=12).map(b"".join))
@settings(max_examples=500)
def test_call_id_peek_matches_the_reference(message: bytes) -> None:
    assert call_id(b"INVITE sip:x SIP/2.0" + message) == reference_call_id(
        b"INVITE sip:x SIP/2.0" + message
    )
    assert call_id(message) == reference_call_id(message)


def connection(direction: str = "inbound") -> Connection:
    c = Connection(
        direction,  # type: ignore[arg-type]
        ("192.0.2.1", 5061),
        ("127.0.0.1", 5061),
        "tls:127.0.0.1:5061",
        sni="sip.example.com",
        tls_version="TLSv1.3",
    )
    c.state = "open"
    return c


@given(st.binary(max_size=80))
@settings(max_examples=300)
def test_session_record_at_is_session_record(cid: bytes) -> None:
    prefix = events.session_record_prefix(connection(), keys=False)
    head = events.session_record_head(prefix)
    fast = events.session_record_at(head, prefix, cid)
    assert fast == events.session_record(prefix, cid)
    assert json.loads(fast)["call_id"] == cid.decode("utf-8", "replace")
    assert events.session_record_at(head, prefix, cid, 999) == events.session_record(
        prefix, cid, 999
    )


class Recorder:
    """A destination that keeps what it is given."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.packets.append(data)
        return True

    def send_packets(self, packets: list[bytes]) -> None:
        self.packets += packets


def tracer(conn: Connection, **settings: Any) -> tuple[ConnectionTracer, Recorder]:
    """A tracer with two destinations; the first's recorder (the second must get the same:
    `recorded` checks that)."""
    config = validate({"hep_id": ["[h]127.0.0.1:9"], **settings}, "test")
    manager = TraceManager(config, cast(list[HepSender], [Recorder(), Recorder()]))
    return ConnectionTracer(manager, conn), cast(Recorder, manager.senders[0])


def recorded(t: ConnectionTracer) -> list[bytes]:
    """What each destination got, in its order (the same for both)."""
    first, second = (cast(Recorder, s).packets for s in t.manager.senders)
    assert first == second
    return first


def sip(n: int, *, cid: bytes | None = None, extra: bytes = b"", body: bytes = b"") -> bytes:
    call = b"" if cid == b"" else b"Call-ID: " + (cid or b"c%d@example.com" % n) + b"\r\n"
    return (
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK%d\r\n" % n
        + call
        + extra
        + b"CSeq: 1 INVITE\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )


CHUNKS = st.one_of(
    st.integers(0, 5).map(lambda n: sip(n)),  # repeated Call-IDs: one session record each
    st.just(b"\r\n\r\n"),  # keep-alives
    st.just(b"\r\n"),
    st.integers(0, 3).map(lambda n: sip(n, extra=b"X-Tlstrace-Truncated: forged\r\n")),
    st.integers(0, 3).map(lambda n: sip(n, cid=b"L" * 300 + b"%d" % n)),
    st.integers(0, 3).map(lambda n: sip(n, body=b"b" * 1500)),  # over hep_max_packet
    st.integers(0, 3).map(lambda n: sip(n, cid=b"")),  # no Call-ID
    st.integers(0, 3).map(lambda n: sip(n, cid=b'q"uote\\%d' % n)),
)


@given(
    st.lists(st.tuples(st.booleans(), st.lists(CHUNKS, min_size=1, max_size=5)), max_size=6),
    st.sampled_from(["inbound", "outbound"]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 6),
)
@settings(max_examples=150, deadline=None)
def test_a_batch_sends_what_one_message_at_a_time_sends(
    batches: list[tuple[bool, list[bytes]]],
    direction: str,
    backend: bool,
    sessions: bool,
    backend_up_after: int,
) -> None:
    conn = connection(direction)
    opts = {"hep_max_packet": 1024, "trace_backend": backend, "trace_sessions": sessions}
    batched, got = tracer(conn, **opts)
    single, _ = tracer(conn, **opts)
    legs = (("10.0.0.1", 40000), ("10.0.0.2", 5060))
    now = 1700000000.123456
    for i, (received, chunks) in enumerate(batches):
        if i == backend_up_after:
            batched.backend_leg(legs)
            single.backend_leg(legs)
        batched.messages(chunks, received, now + i)
        for chunk in chunks:
            if chunk[0] not in b"\r\n":
                single.message(chunk, received, now + i)
    batched.backend_leg(legs)
    single.backend_leg(legs)
    assert recorded(batched) == recorded(single)
    assert batched.manager.packets == single.manager.packets == len(got.packets)
    assert batched.manager.oversize == single.manager.oversize
    for p in got.packets:
        assert len(p) <= 1024
        decode(p)  # well formed


def test_a_batch_skips_keepalives_and_stamps_every_packet_with_its_time() -> None:
    t, _ = tracer(connection())
    t.messages([sip(1), b"\r\n\r\n", sip(2), b"\r\n"], True, 1700000000.5)
    packets = [decode(p) for p in recorded(t)]
    assert [(p.proto_type, p.correlation_id) for p in packets] == [
        (1, b"c1@example.com"),
        (100, b"c1@example.com"),
        (1, b"c2@example.com"),
        (100, b"c2@example.com"),
    ]
    assert {(p.ts_sec, p.ts_usec) for p in packets} == {(1700000000, 500000)}
    assert packets[0].payload == sip(1)
    assert t.manager.packets == 4
