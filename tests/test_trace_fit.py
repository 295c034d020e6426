"""Fitting what a client controls into one HEP packet, without sockets: the stable short form
of long Call-IDs and event fields, SIP truncation headers first, and the tracer's use of them
(room per connection, a reload of hep_max_packet, a backend leg with larger packets).
The relay-level tests, read back by Kamailio and hep-js, are in
tests/hardening/test_trace_oversize.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hep.codec import decode
from tlstrace.config.load import validate
from tlstrace.relay.connection import Connection
from tlstrace.tls.certinfo import CertInfo
from tlstrace.trace import events
from tlstrace.trace.fit import (
    CALL_ID_MAX,
    FIELD_MAX,
    MARK,
    _cut,
    short_id,
    short_text,
    truncate_sip,
)
from tlstrace.trace.tracer import ConnectionTracer, TraceManager


def sip(call_id: bytes = b"fit@x", body: bytes = b"", extra: list[bytes] | None = None) -> bytes:
    lines = [
        b"INVITE sip:bob@example.com SIP/2.0",
        b"Via: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK1",
        *(extra or []),
        b"From: <sip:a@x>;tag=1",
        b"To: <sip:b@x>",
        b"Call-ID: " + call_id,
        b"CSeq: 1 INVITE",
        b"Content-Length: " + str(len(body)).encode(),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- short forms -------------------------------------------------------------------------------


def test_short_id_keeps_ids_up_to_the_bound_and_shortens_longer_ones_stably() -> None:
    at = b"a" * CALL_ID_MAX
    assert short_id(at) is at and short_id(at[:-1]) == at[:-1]
    over = b"o" * (CALL_ID_MAX + 1)
    s = short_id(over)
    assert len(s) == CALL_ID_MAX == 256
    assert s == over[:223] + b"~" + hashlib.sha256(over).hexdigest()[:32].encode()
    huge = b"h" * 33000
    assert short_id(huge) == short_id(bytes(huge)) and short_id(huge) != short_id(huge + b"!")
    # the same prefix, another tail: another short id
    assert short_id(b"x" * 300 + b"1") != short_id(b"x" * 300 + b"2")


def test_short_id_does_not_cut_a_utf8_character() -> None:
    for lead in range(0, 4):
        value = b"a" * lead + "é€😀".encode() * 100
        s = short_id(value)
        assert len(s) <= CALL_ID_MAX
        s[:-33].decode("utf-8")  # a whole number of characters
        assert s[-33:-32] == b"~"


def test_short_text_bounds_event_fields() -> None:
    assert short_text("/CN=x") == "/CN=x"
    long = "/CN=" + "é" * 5000
    s = short_text(long)
    assert len(s) == FIELD_MAX == 1024 and s.startswith("/CN=éé")
    assert s.endswith("~" + hashlib.sha256(long.encode()).hexdigest()[:32])


def test_events_shorten_certificate_fields() -> None:
    conn = Connection("inbound", ("192.0.2.1", 5061), ("127.0.0.1", 5061), "tls:x")
    conn.local_cert = CertInfo(
        "/CN=" + "s" * 70000,
        "/CN=" + "i" * 70000,
        "01",
        "ab",
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )
    parts = dict(events.handshake_event(conn, ok=True, message="", reason=None, keys=False))
    assert len(parts["server-subject"]) == len(parts["server-issuer"]) == FIELD_MAX
    prefix = events.session_record_prefix(conn, keys=False)
    assert len(prefix) < 4 * FIELD_MAX


# -- truncation --------------------------------------------------------------------------------


def test_truncation_cuts_the_body_first_and_marks_the_copy() -> None:
    msg = sip(body=b"v" * 5000)
    out, cut = truncate_sip(msg, 1000)
    assert (cut, len(out)) == ("body", 1000)
    first, rest = msg.split(b"\r\n", 1)
    mark = b"X-Tlstrace-Truncated: length=%d;cut=body\r\n" % len(msg)
    assert out == (first + b"\r\n" + mark + rest)[:1000]


def test_truncation_leaves_header_lines_out_keeping_the_dialogs() -> None:
    pad = [b"X-Pad-%03d: " % i + b"p" * 80 for i in range(100)]
    msg = sip(b"hdr@x", b"v" * 100, pad)
    out, cut = truncate_sip(msg, 2000)
    assert cut == "headers" and len(out) <= 2000 and out.endswith(b"\r\n\r\n")
    lines = out.split(b"\r\n")
    assert lines[0] == b"INVITE sip:bob@example.com SIP/2.0"
    assert lines[1] == b"X-Tlstrace-Truncated: length=%d;cut=headers" % len(msg)
    for h in (b"Via:", b"From:", b"To:", b"Call-ID: hdr@x", b"CSeq:"):
        assert any(x.startswith(h) for x in lines), h
    kept = [x for x in lines if x.startswith(b"X-Pad-")]
    assert kept == pad[: len(kept)] and 0 < len(kept) < 100  # in order, the last ones left out


def test_truncation_keeps_folded_headers_whole_and_shortens_a_huge_call_id() -> None:
    folded = [b"Subject: one", b" two", b"\tthree"]
    cid = b"c" * 40000
    msg = sip(cid, b"", folded)
    out, cut = truncate_sip(msg, 1500, short_id(cid))
    assert cut == "headers" and len(out) <= 1500
    assert b"Subject: one\r\n two\r\n\tthree\r\n" in out
    assert b"\r\nCall-ID: " + short_id(cid) + b"\r\n" in out


def test_truncation_of_a_padded_start_line_and_of_no_header_end() -> None:
    msg = b"INVITE sip:" + b"u" * 70000 + b"@x SIP/2.0\r\nCall-ID: s@x\r\n\r\n"
    out, cut = truncate_sip(msg, 1000)
    assert cut == "headers" and len(out) <= 1000 and out.startswith(b"INVITE sip:uuu")
    assert b"Call-ID: s@x\r\n" in out
    out, cut = truncate_sip(b"OPTIONS sip:x SIP/2.0\r\nVia: " + b"v" * 5000, 500)
    assert len(out) <= 500 and out.startswith(b"OPTIONS sip:x SIP/2.0\r\nX-Tlstrace-Truncated")


@given(st.binary(max_size=3000), st.integers(300, 3000))
@settings(max_examples=300, deadline=None)
def test_truncation_never_exceeds_its_room(data: bytes, room: int) -> None:
    msg = b"MESSAGE sip:x SIP/2.0\r\n" + data
    if len(msg) <= room:
        return
    out, cut = truncate_sip(msg, room, short_id(b"k" * 300))
    assert len(out) <= room and cut in ("body", "headers")
    assert b"\r\nX-Tlstrace-Truncated: length=%d;cut=" % len(msg) in out


def python_lines(fn: Callable[[], object]) -> int:
    """How many Python lines `fn()` executes (work done in C, in bytes and re, is not seen)."""
    count = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_truncating_headers_costs_no_python_work_per_header_line() -> None:
    """16,000 short header lines, folds or Via headers cost no more Python lines than 1,000:
    the header section is handled in C (one regex split, one rfind, joins), never line by
    line in Python nor by repeated `+=` on a folded header."""

    def shapes(n: int) -> dict[str, bytes]:
        return {
            "a:": sip(extra=[b"a:"] * n),
            "folds": sip(extra=[b"Subject: s", *[b" f"] * n]),
            "v:": sip(extra=[b"v:"] * n),
            "folds in Via": sip(extra=[b"v: SIP/2.0/TLS x", *[b"\tf"] * n]),
        }

    small, large = shapes(1000), shapes(16000)
    for name in small:
        assert len(large[name]) <= 65535
        truncate_sip(small[name], 1000, b"short@x")  # anything done once only, done
        cost = [
            python_lines(lambda m=m: truncate_sip(m, 1000, b"short@x"))  # type: ignore[misc]
            for m in (small[name], large[name])
        ]
        assert max(cost) < 200, (name, cost)  # on merge-stall: 13,513 and 208,513 for a:


def test_truncation_puts_the_dialog_first_and_keeps_a_folded_header_whole_or_not_at_all() -> None:
    folded = [b"Subject: " + b"s" * 50, *[b" " + b"f" * 50] * 40]  # 2 kB, one header
    msg = sip(b"fold@x", b"v" * 100, [b"X-Before: 1", *folded, b"X-After: 2"])
    out, cut = truncate_sip(msg, 1000)
    assert cut == "headers" and len(out) <= 1000
    lines = out.split(b"\r\n")
    assert lines[2:7] == [
        b"Via: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK1",
        b"From: <sip:a@x>;tag=1",
        b"To: <sip:b@x>",
        b"Call-ID: fold@x",
        b"CSeq: 1 INVITE",
    ]
    assert lines[7:] == [b"X-Before: 1", b"", b""]  # the folded header would not fit: out whole
    out, _ = truncate_sip(msg, 3000)
    assert b"\r\n".join(folded) + b"\r\nX-After: 2\r\n" in out
    # compact forms and a space before the colon are the dialog's too
    compact = (
        b"MESSAGE sip:x SIP/2.0\r\n" + b"X-Pad: p\r\n" * 300 + b"v : SIP/2.0/TLS a\r\n"
        b"f: <sip:a@x>\r\ni: c@x\r\nt: <sip:b@x>\r\nCSEQ: 2 MESSAGE\r\n\r\n"
    )
    out, _ = truncate_sip(compact, 400)
    assert out.split(b"\r\n")[2:7] == [
        b"v : SIP/2.0/TLS a",
        b"f: <sip:a@x>",
        b"i: c@x",
        b"t: <sip:b@x>",
        b"CSEQ: 2 MESSAGE",
    ]


@given(
    st.lists(st.sampled_from([b"\r\n", b" ", b"\t", b"x", b"\r", b"\n", b"ab"]), max_size=80),
    st.integers(0, 200),
)
@settings(max_examples=500, deadline=None)
def test_the_cut_ends_at_the_last_whole_header_that_fits(pieces: list[bytes], budget: int) -> None:
    """`_cut` (one rfind, and for a folded header a translate and three rfinds) against the
    plain definition: a header ends at a CRLF not followed by a space or a tab."""
    rest = b"\r\nH" + b"".join(pieces)
    rest = rest[:-2] if rest.endswith(b"\r\n") else rest
    if b"\r\n\r\n" in rest:
        return
    ends = [m.start() for m in re.finditer(rb"\r\n(?![ \t])", rest)] + [len(rest)]
    assert _cut(rest, budget) == max([0] + [e for e in ends if e <= budget])


def test_a_flood_of_via_headers_does_not_push_the_dialog_out() -> None:
    """Dialog headers that alone do not fit: the first of each kind is kept before more Vias."""
    msg = (
        b"INVITE sip:x SIP/2.0\r\n"
        + b"Via: SIP/2.0/TLS 192.0.2.9\r\n" * 2000
        + b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: "
        + b"c" * 40000
        + b"\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    out, cut = truncate_sip(msg, 2000, short_id(b"c" * 40000))
    assert cut == "headers" and len(out) <= 2000
    lines = out.split(b"\r\n")
    assert lines[2:7] == [
        b"Via: SIP/2.0/TLS 192.0.2.9",
        b"From: <sip:a@x>;tag=1",
        b"To: <sip:b@x>",
        b"Call-ID: " + short_id(b"c" * 40000),
        b"CSeq: 7 INVITE",
    ]
    assert set(lines[7:-2]) == {b"Via: SIP/2.0/TLS 192.0.2.9"} and len(lines) > 40


def test_a_mark_sent_by_the_client_is_renamed_in_the_trace_only() -> None:
    """A message that fits is traced as it came, except that a header the client named like the
    truncation mark is renamed (same length): in a traced copy, `X-Tlstrace-Truncated` is only
    ever tlstrace's own mark, the second line of a message that was cut."""
    manager, tracer, out, _ = tracer_for(hep_max_packet=4096)
    forged = sip(b"forged@x", b"v" * 10, [b"X-Tlstrace-Truncated: length=99999;cut=body"])
    sent = bytes(forged)
    tracer.message(forged, True, time.time())
    assert forged == sent  # what is relayed is never touched
    traced = decode(out.packets[0]).payload
    assert MARK not in traced and len(traced) == len(forged)
    assert traced == forged.replace(b"X-Tlstrace-Truncated:", b"X-Tlstrace-Untrusted:")
    assert manager.oversize["truncated_body"] == 0
    # cut for real: the one mark is tlstrace's, the client's is renamed
    big = sip(b"forged2@x", b"v" * 5000, [b"X-Tlstrace-Truncated: length=1;cut=headers"])
    tracer.message(big, True, time.time())
    traced = decode(out.packets[-2]).payload
    assert traced.count(MARK) == 1 and b"X-Tlstrace-Untrusted: length=1;cut=headers" in traced
    assert traced.split(b"\r\n")[1] == MARK + b": length=%d;cut=body" % len(big)


# -- the tracer --------------------------------------------------------------------------------


class Collect:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.packets.append(data)
        return True

    def send_packets(self, packets: list[bytes]) -> None:
        self.packets += packets


def tracer_for(**settings: Any) -> tuple[TraceManager, ConnectionTracer, Collect, Any]:
    config = validate({"hep_id": ["[h]127.0.0.1:9"], "trace_on": True, **settings}, "test")
    relay: Any = SimpleNamespace(tls_legs={})
    out = Collect()
    manager = TraceManager(config, [out], relay)  # type: ignore[list-item]
    conn = Connection("inbound", ("192.0.2.1", 5061), ("127.0.0.1", 5061), "tls:127.0.0.1:5061")
    tracer = ConnectionTracer(manager, conn)
    relay.tls_legs[conn.id] = SimpleNamespace(tracer=tracer)
    return manager, tracer, out, config


def test_hep_max_packet_bounds_every_packet_and_a_reload_applies_to_open_connections() -> None:
    manager, tracer, out, config = tracer_for(hep_max_packet=4096)
    tracer.message(sip(body=b"v" * 3000), True, time.time())
    assert manager.oversize["truncated_body"] == 0
    tracer.message(sip(body=b"v" * 5000), True, time.time())
    assert manager.oversize["truncated_body"] == 1
    assert max(map(len, out.packets)) == 4096
    sips = [decode(p) for p in out.packets if decode(p).proto_type == 1]
    assert b"X-Tlstrace-Truncated: length=" in sips[-1].payload
    notes = [decode(p) for p in out.packets if b"tls-trace-truncated" in decode(p).payload]
    assert len(notes) == 1 and notes[0].proto_type == 100 and notes[0].correlation_id == b"fit@x"

    manager.apply_config(config.model_copy(update={"hep_max_packet": 65507}))
    out.packets.clear()
    tracer.message(sip(body=b"v" * 5000), False, time.time())
    assert manager.oversize["truncated_body"] == 1 and b"X-Tlstrace" not in out.packets[0]


def test_a_long_call_id_is_shortened_in_messages_and_session_records() -> None:
    manager, tracer, out, _ = tracer_for()
    cid = b"L" * 33000
    tracer.message(sip(cid, b"v" * 100), True, time.time())
    tracer.message(sip(cid, b"v" * 100), False, time.time())
    packets = [decode(p) for p in out.packets]
    assert {p.correlation_id for p in packets} == {short_id(cid)}
    assert [p.proto_type for p in packets] == [1, 100, 1]
    assert packets[0].payload == sip(cid, b"v" * 100)  # the message itself fits: untouched
    assert b'"call_id_length":33000' in packets[1].payload
    assert manager.oversize["long_call_id"] == 2
    assert len(tracer.seen) == 1  # one Call-ID remembered (as a hash of its short id)


def test_early_messages_refit_for_a_backend_leg_with_larger_packets() -> None:
    """A message that fits the client's IPv4 packets exactly, read before an IPv6 backend leg
    was up, is traced on that leg truncated to its (24 bytes smaller) room."""
    manager, tracer, out, _ = tracer_for(trace_backend=True, trace_sessions=False)
    probe = sip(body=b"v")
    tracer.message(probe, True, time.time())
    overhead = len(out.packets[0]) - len(probe)
    n = 65507 - overhead - len(probe) + 1 - 4  # "Content-Length: 1" becomes 5 digits
    msg = sip(body=b"v" * n)
    assert len(msg) + overhead == 65507
    tracer.message(msg, True, time.time())
    assert len(out.packets[1]) == 65507 and manager.oversize["truncated_body"] == 0
    tracer.backend_leg((("2001:db8::1", 40000), ("2001:db8::2", 5060)))
    backend = [decode(p) for p in out.packets[2:]]
    assert [p.src_ip for p in backend] == ["2001:db8::1", "2001:db8::1"]
    assert backend[0].payload == probe
    assert len(out.packets[3]) == 65507
    assert backend[1].payload.startswith(
        b"INVITE sip:bob@example.com SIP/2.0\r\nX-Tlstrace-Truncated: length=%d;cut=body" % len(msg)
    )


def test_what_cannot_fit_at_all_is_counted_not_sent(caplog: Any) -> None:
    """A hep_max_packet that the configured chunks nearly fill: the SIP message and the events
    that cannot be built are counted (not_traced) and logged, never sent over the bound."""
    manager, tracer, out, _ = tracer_for(hep_max_packet=1024, hep_auth_key="k" * 900)
    conn = tracer.conn
    conn.local_cert = CertInfo(
        "/CN=" + "s" * 2000, "/CN=i", "01", "ab", dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    )
    tracer.build_session()
    with caplog.at_level("WARNING", logger="tlstrace.trace"):
        tracer.message(sip(body=b"v" * 2000), True, time.time())
        manager.send_event(conn, events.closed_event("EOF received"))
    assert all(len(p) <= 1024 for p in out.packets)
    assert manager.oversize["not_traced"] >= 2  # the message, the session record
    assert f"conn {conn.id} inbound 192.0.2.1:5061: " in caplog.text
    assert "not traced: hep_max_packet 1024 leaves no room" in caplog.text
