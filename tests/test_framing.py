"""SIP stream framing, sans-IO: no sockets, just bytes in and events out."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.sip import request, response_to
from tlstrace.sip.framing import (
    PING,
    Dropped,
    Event,
    FramingError,
    FramingErrorKind,
    KeepAlive,
    Message,
    SipFramer,
)


def feed_all(framer: SipFramer, *chunks: bytes) -> list[Event]:
    events: list[Event] = []
    for c in chunks:
        events.extend(framer.feed(c))
    return events


def messages(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Message)]


def errors(events: list[Event]) -> list[FramingErrorKind]:
    return [e.kind for e in events if isinstance(e, FramingError)]


def test_one_message_one_event_bytes_unchanged() -> None:
    msg = request("INVITE", body=b"v=0\r\n")
    assert SipFramer().feed(msg) == [Message(msg)]


def test_coalesced_messages_and_response() -> None:
    a, b = request("INVITE", "a"), request("BYE", "b", body=b"xyz")
    r = response_to(a)
    assert messages(SipFramer().feed(a + r + b)) == [a, r, b]


def test_compact_content_length_and_case_insensitive_names() -> None:
    m1 = request("MESSAGE", body=b"hello", compact=True)
    m2 = b"MESSAGE sip:x SIP/2.0\r\ncontent-LENGTH:  3\t\r\nCall-ID: z\r\n\r\nabc"
    assert messages(SipFramer().feed(m1 + m2)) == [m1, m2]


def test_body_may_contain_crlfcrlf_and_binary() -> None:
    body = b"\r\n\r\n\x00\xff" * 10
    msg = request("MESSAGE", body=body)
    assert messages(SipFramer().feed(msg)) == [msg]


def test_missing_content_length_is_an_error() -> None:
    msg = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n"
    assert errors(SipFramer().feed(msg)) == [FramingErrorKind.MISSING_CONTENT_LENGTH]


def test_bad_content_lengths_are_errors() -> None:
    for value in (b"-1", b"abc", b"", b"1e3", b"99999999999", b"4 5", b"0x10"):
        msg = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: " + value + b"\r\n\r\n"
        assert errors(SipFramer().feed(msg)) == [FramingErrorKind.BAD_CONTENT_LENGTH], value


def test_two_length_headers_are_ambiguous_even_when_equal() -> None:
    """Kamailio, OpenSIPS and pjsip take the first, chan_sip the long form wherever it is,
    sofia-sip refuses the message: any second length header is refused."""
    for lines in (
        b"Content-Length: 0\r\nl: 5",
        b"Content-Length: 5\r\nl: 5",
        b"Content-Length: 5\r\nContent-Length: 5",
        b"l: 5\r\nL: 5",
    ):
        msg = b"OPTIONS sip:x SIP/2.0\r\n" + lines + b"\r\n\r\nhello"
        assert errors(SipFramer().feed(msg)) == [FramingErrorKind.AMBIGUOUS_LENGTH], lines


AMBIGUOUS = {
    # Kamailio/OpenSIPS read "_" as "-"
    b"Content_Length: 5": "not spelled Content-Length",
    b"content_length: 5": "not spelled Content-Length",
    # after leading whitespace: a folded line Kamailio/OpenSIPS still read as a length
    b"X-A: b\r\n Content-Length: 5": "after leading whitespace",
    b"X-A: b\r\n\tl: 5": "after leading whitespace",
    # chan_sip needs the colon right after the name
    b"Content-Length : 5": "whitespace before the colon",
    b"Content-Length\t: 5": "whitespace before the colon",
    b"l : 5": "whitespace before the colon",
    # pjsip, chan_sip and sofia-sip join a folded value; Kamailio/OpenSIPS do not
    b"Content-Length: 5\r\n 6": "continued on a folded line",
    b"Content-Length:\r\n 5": "continued on a folded line",
    b"Content-Length\r\n : 5": "continued on a folded line",
    # only starts like a length header
    b"Content-Lengthx: 5": "no colon right after the name",
    b"l": "no colon right after the name",
}


def test_length_headers_a_server_could_read_differently() -> None:
    for lines, why in AMBIGUOUS.items():
        msg = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\n" + lines + b"\r\n\r\nhello"
        (err,) = [e for e in SipFramer().feed(msg) if isinstance(e, FramingError)]
        assert err.kind == FramingErrorKind.AMBIGUOUS_LENGTH, lines
        assert why in err.detail, (lines, err.detail)


def test_start_line_that_reads_as_a_length() -> None:
    """Kamailio/OpenSIPS look for the length from the first byte of a message."""
    for start in (b"l: 0 SIP/2.0", b"Content-Length: 0 SIP/2.0", b"content_length:0 sip/2.0"):
        msg = start + b"\r\nContent-Length: 5\r\n\r\nhello"
        assert errors(SipFramer().feed(msg)) == [FramingErrorKind.AMBIGUOUS_LENGTH], start
    ok = b"CANCEL sip:x SIP/2.0\r\nl: 0\r\n\r\n"
    assert messages(SipFramer().feed(ok)) == [ok]


def test_forms_every_server_reads_the_same_pass() -> None:
    for lines in (
        b"Content-Length: 5",
        b"content-length:5",
        b"CONTENT-LENGTH:\t 5 \t",
        b"l: 5",
        b"L:5",
        b"Content-Length: 0005",
        b"Subject: a\r\n b\r\nl: 5",
        b"X-Content-Length: 9\r\nl: 5",
        b"Lines: 9\r\nl: 5",
    ):
        msg = b"OPTIONS sip:x SIP/2.0\r\n" + lines + b"\r\n\r\nhello"
        assert messages(SipFramer().feed(msg)) == [msg], lines


def test_too_large_declared_and_too_large_headers() -> None:
    framer = SipFramer(max_msg_size=2000)
    assert errors(framer.feed(request("MESSAGE", body=b"x" * 2000))) == [FramingErrorKind.TOO_LARGE]
    endless = b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Pad: yyyyyyyyyy\r\n" * 200
    assert errors(SipFramer(max_msg_size=2000).feed(endless)) == [FramingErrorKind.TOO_LARGE]


def test_exactly_max_size_passes() -> None:
    msg = request("MESSAGE", body=b"")
    msg = request("MESSAGE", body=b"x" * (3000 - len(msg) - 2))
    assert len(msg) in (2999, 3000, 3001)
    framer = SipFramer(max_msg_size=len(msg))
    assert messages(framer.feed(msg)) == [msg]


def test_ping_pong_and_lone_crlf() -> None:
    msg = request()
    events = SipFramer().feed(b"\r\n\r\n" + msg + b"\r\n")
    assert events == [PING, Message(msg), KeepAlive(b"\r\n")]


def test_crlf_drop() -> None:
    events = SipFramer(crlf_drop=True).feed(b"\r\n")
    assert events == [Dropped(2)]
    assert SipFramer(crlf_drop=True).feed(b"\r\n\r\n") == [PING]


def test_pingpong_off_relays_crlfcrlf() -> None:
    assert SipFramer(pingpong=False).feed(b"\r\n\r\n") == [KeepAlive(b"\r\n\r\n")]


def test_chunk_limit() -> None:
    msg = request("INVITE", body=b"v=0\r\n" * 40)
    framer = SipFramer(max_chunks=4)
    quarter = len(msg) // 4
    parts = [
        msg[:quarter],
        msg[quarter : 2 * quarter],
        msg[2 * quarter : 3 * quarter],
        msg[3 * quarter :],
    ]
    assert messages(feed_all(framer, *parts)) == [msg]  # 3 incomplete reads: fine
    five = [msg[i * len(msg) // 5 : (i + 1) * len(msg) // 5] for i in range(5)]
    assert errors(feed_all(SipFramer(max_chunks=4), *five)) == [FramingErrorKind.TOO_MANY_CHUNKS]


def test_chunk_count_restarts_with_each_message() -> None:
    framer = SipFramer(max_chunks=2)
    a, b = request(call_id="a"), request(call_id="b")
    events = feed_all(framer, a[:10], a[10:] + b[:10], b[10:])
    assert messages(events) == [a, b]


def test_nul_bare_cr_and_bare_lf_in_headers() -> None:
    for bad in (b"X-A: a\x00b\r\n", b"X-A: a\rb\r\n", b"X-A: a\nb\r\n"):
        msg = b"OPTIONS sip:x SIP/2.0\r\n" + bad + b"Content-Length: 0\r\n\r\n"
        assert errors(SipFramer().feed(msg)) == [FramingErrorKind.BAD_HEADER_BYTES], bad


def test_start_line_must_be_sip() -> None:
    for bad in (b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n"):
        assert errors(SipFramer().feed(bad)) == [FramingErrorKind.BAD_START_LINE]
    ok = b"invite sip:x sip/2.0\r\nContent-Length: 0\r\n\r\n"
    assert messages(SipFramer().feed(ok)) == [ok]


def test_state_resets_after_error() -> None:
    framer = SipFramer()
    assert errors(framer.feed(b"GET / HTTP/1.1\r\n\r\n"))
    assert framer.buffered == 0


sip_messages = st.lists(
    st.builds(
        lambda method, n, body, compact: request(method, f"c{n}", n, body, compact=compact),
        st.sampled_from(["INVITE", "ACK", "BYE", "MESSAGE", "OPTIONS"]),
        st.integers(1, 10_000),
        st.binary(max_size=3000),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(sip_messages, st.data())
def test_any_split_gives_the_same_messages(msgs: list[bytes], data: st.DataObject) -> None:
    """However the stream is cut into chunks, the same messages come out, byte for byte."""
    stream = b"".join(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = SipFramer(max_msg_size=1 << 20, max_chunks=None)
    assert messages(feed_all(framer, *chunks)) == msgs
    assert framer.buffered == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4000), st.integers(1, 64))
def test_garbage_never_raises(data: bytes, step: int) -> None:
    framer = SipFramer(max_msg_size=2048, max_chunks=8)
    for i in range(0, len(data), step):
        for ev in framer.feed(data[i : i + step]):
            assert isinstance(ev, Message | KeepAlive | Dropped | FramingError) or ev is PING


def test_a_message_trickled_in_many_reads_is_held_not_rejoined() -> None:
    """A message in many reads (the end of its headers straddling reads at every offset) comes
    out whole; what is held is kept as the reads themselves until the message can be whole
    (joined once: no quadratic re-join and rescan per read at large max_msg_size x
    max_chunks), and `buffered` says how much."""
    msg = request("INVITE", body=b"v=0\r\n" * 40)
    for step in (1, 2, 3, 5, 7):
        framer = SipFramer(max_chunks=None, max_msg_size=1 << 20)
        got: list[bytes] = []
        for i in range(0, len(msg), step):
            assert framer.feed_into(msg[i : i + step], got) >= 0
            if len(got) == 0:
                assert framer.buffered == min(i + step, len(msg))
        assert got == [msg] and framer.buffered == 0


def test_headers_with_no_end_over_several_reads_are_too_large() -> None:
    framer = SipFramer(max_chunks=None, max_msg_size=1000)
    events = []
    for _ in range(30):
        events += framer.feed(b"INVITE sip:a SIP/2.0\r\nX: " + b"y" * 40)
    errors = [e for e in events if isinstance(e, FramingError)]
    assert [e.kind for e in errors] == [FramingErrorKind.TOO_LARGE]
    assert "no end of headers within 1000 bytes" in errors[0].detail
