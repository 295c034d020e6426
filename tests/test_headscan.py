"""The framer's C fast path (tlstrace/sip/_headscan.c) never says more than the Python rules.

Each answer of `strict_size` / `lenient_size` must be -1 ("the Python path decides") or the
very size `SipFramer._check_head` returns; and the plain messages real SIP software sends must
take the fast path (not -1), or it buys nothing. In-memory, no sockets.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.sip import request
from tlstrace.sip.framing import FramingError, Message, SipFramer

headscan = pytest.importorskip("tlstrace.sip._headscan", reason="the C fast path is not built")

BIG = 1 << 40

STRICT = SipFramer(strict=True, max_msg_size=BIG)
LENIENT = SipFramer(strict=False, max_msg_size=BIG)

INVITE = request(
    "INVITE", "a84b4c76e66710@pc33.example.com", body=b"v=0\r\n", headers=["Content-Type: x"]
)
LENGTH = b"Content-Length: 5"
START = b"INVITE sip:bob@example.com SIP/2.0"

PLAIN = [
    INVITE,
    INVITE.replace(LENGTH, b"l: 5"),
    INVITE.replace(LENGTH, b"content-length:5 \t"),
    INVITE.replace(LENGTH, b"CONTENT-LENGTH:  0000000005"),
    request("CANCEL", "c@x"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 192.0.2.1\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n",
    b"SIP/2.0 100 Trying\r\nContent-Length: 0\r\nCall-ID: y\r\n\r\n",
    b"REGISTER sip:example.com SIP/2.0\r\nl: 0\r\nContact: <sip:a@b>\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nLocation: here\r\nlength: 3\r\nContent-Length: 0\r\n\r\n",
]


def slow(framer: SipFramer, buf: bytes, pos: int, head_end: int) -> int | None:
    result = framer._check_head(buf, pos, head_end)
    return None if isinstance(result, FramingError) else result


def check(buf: bytes, pos: int = 0) -> tuple[int, int]:
    """Both fast answers for buf[pos:], each checked against the Python path."""
    head_end = buf.find(b"\r\n\r\n", pos)
    if head_end <= pos:
        return -1, -1
    answers = []
    for fast, framer in ((headscan.strict_size, STRICT), (headscan.lenient_size, LENIENT)):
        got = fast(buf, pos, head_end)
        if got != -1:
            assert got == slow(framer, buf, pos, head_end), (fast.__name__, buf)
        answers.append(got)
    return answers[0], answers[1]


@pytest.mark.parametrize("msg", PLAIN)
def test_plain_messages_take_the_fast_path(msg: bytes) -> None:
    assert check(msg) == (len(msg), len(msg))
    before = b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n"  # a message that is not the buffer's first
    assert check(before + msg, len(before)) == (len(msg), len(msg))
    assert SipFramer().feed(before + msg) == [Message(before), Message(msg)]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # each makes a message the Python rules reject or judge specially: the fast path says -1
        (LENGTH, b"Content-Length : 5"),
        (LENGTH, b"Content_Length: 5"),
        (LENGTH, b"Content-Lengthx: 5"),
        (LENGTH, b"Content-Length: 5\r\nl: 5"),
        (LENGTH, b"Content-Length: 5\r\n 5"),
        (LENGTH, b" Content-Length: 5"),
        (LENGTH, b"Content-Length: 12345678901"),
        (LENGTH, b"Content-Length: -5"),
        (LENGTH, b"Content-Length:"),
        (LENGTH + b"\r\n", b""),
        (b"Max-Forwards", b"Max\x00Forwards"),
        (b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"),
        (b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r"),
        (b" SIP/2.0\r\n", b" sip/2.0\r\n"),
        (START, b"l: 5 SIP/2.0"),
        (START, b"Content-Length: 5 SIP/2.0"),
        (START + b"\r\nVia", b"GET / HTTP/1.1\r\nVia"),
    ],
)
def test_unusual_headers_are_left_to_python(old: bytes, new: bytes) -> None:
    assert INVITE.count(old) == 1
    strict, _lenient = check(INVITE.replace(old, new))
    assert strict == -1


def test_arguments_outside_the_framers_use_are_left_to_python() -> None:
    head_end = INVITE.find(b"\r\n\r\n")
    for fast in (headscan.strict_size, headscan.lenient_size):
        assert fast(INVITE, 0, head_end + 1) == -1
        assert fast(INVITE, -1, head_end) == -1
        assert fast(INVITE, head_end, head_end) == -1
        assert fast(INVITE, 0, len(INVITE)) == -1
        with pytest.raises(TypeError):
            fast(bytearray(INVITE), 0, head_end)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            fast(INVITE, 0)  # type: ignore[call-arg]


# -- generated: header sections built from the pieces the rules are about ---------------------

START = [
    b"INVITE sip:a@b SIP/2.0",
    b"SIP/2.0 200 OK",
    b"CANCEL sip:a SIP/2.0",
    b"invite sip:a sip/2.0",
    b"l: 5 SIP/2.0",
    b"Content-Length: 1 SIP/2.0",
    b"content_length:2 SIP/2.0",
    b"L SIP/2.0",
    b"SIP/2.0",
    b"",
]
NAMES = [
    b"Content-Length",
    b"content-length",
    b"CONTENT-LENGTH",
    b"Content_Length",
    b"Content-Lengthy",
    b"l",
    b"L",
    b"Location",
    b"lx",
    b"Via",
    b"Call-ID",
    b"c",
    b"content",
]
SEPARATORS = [b":", b": ", b" :", b"\t: ", b"", b":\t", b" "]
VALUES = [b"0", b"5", b"12", b"0000000003", b"12345678901", b"-1", b"", b"5 ", b"5 6", b"x", b"+4"]
NOISE = [b"\r\n", b"\r", b"\n", b"\x00", b" ", b"\t", b"\r\n ", b"\r\n\t", b"\r\r\n"]

header = st.tuples(
    st.sampled_from(NAMES), st.sampled_from(SEPARATORS), st.sampled_from(VALUES)
).map(b"".join)
piece = st.one_of(header.map(lambda h: b"\r\n" + h), st.sampled_from(NOISE), header)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(START),
    pieces=st.lists(piece, max_size=8),
    body=st.binary(max_size=20),
    prefix=st.sampled_from([b"", b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n"]),
)
def test_generated_headers_never_differ_from_python(
    start: bytes, pieces: list[bytes], body: bytes, prefix: bytes
) -> None:
    buf = prefix + start + b"".join(pieces) + b"\r\n\r\n" + body
    check(buf, len(prefix))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_differ_from_python(data: bytes) -> None:
    check(b"SIP/2.0 200 OK\r\n" + data + b"\r\n\r\n")
    check(data + b"\r\n\r\n")
