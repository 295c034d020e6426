"""Fuzzing the SIP framer from a kept corpus (corpus/sip/, raw bytes; an atheris harness for
longer runs is fuzz_sip_framer.py).

Each seed is named `<outcome>--<what>.sip`: `ok` (messages, no error), `keepalive`,
`incomplete` (held back, waiting for more), or the FramingErrorKind it must end with. The
hypothesis tests mutate the seeds (byte flips, SIP-significant tokens, splices of two seeds,
cuts), split them at random into reads, and feed them with random settings. The framer must
never raise, must only return the documented event types, must return each message byte for
byte as it was in the stream and in stream order, must hold back no more than max_msg_size,
and must give the same messages however the stream is split.

`test_servers_frame_it_the_same` is differential: every message tlstrace frames, from
messages built out of every spelling of a length header (names, case, whitespace and folding
around the colon, values, duplicates, start lines), must be framed to the same size by the
models of Kamailio/OpenSIPS, pjsip (Asterisk), chan_sip (Asterisk) and sofia-sip (FreeSWITCH)
in server_framing.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.server_framing import SERVERS
from tlstrace.sip.framing import (
    Dropped,
    Event,
    FramingError,
    FramingErrorKind,
    KeepAlive,
    Message,
    Ping,
    SipFramer,
)

CORPUS = Path(__file__).parent / "corpus" / "sip"
SEEDS = {p.stem: p.read_bytes() for p in sorted(CORPUS.glob("*.sip"))}
EVENT_TYPES = (Message, Ping, KeepAlive, Dropped, FramingError)
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_corpus_is_there() -> None:
    assert len(SEEDS) >= 30
    outcomes = {name.split("--")[0] for name in SEEDS}
    assert {k.value for k in FramingErrorKind} - {"too_many_chunks"} <= outcomes


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_outcome(name: str) -> None:
    """Each seed, in one read and byte by byte, ends as its name says."""
    outcome = name.split("--")[0]
    data = SEEDS[name]
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        framer = SipFramer(max_chunks=None)
        events = run(framer, pieces)  # stops at an error, as the relay does
        errors = [ev for ev in events if isinstance(ev, FramingError)]
        messages = [ev for ev in events if isinstance(ev, Message)]
        if outcome in ("ok", "keepalive", "incomplete"):
            assert errors == [], errors
            assert bool(messages) == (outcome == "ok")
            assert (framer.buffered > 0) == (outcome == "incomplete")
        else:
            assert [e.kind.value for e in errors] == [outcome]
            assert events[-1] is errors[0]


TOKENS = [
    b"\r\n",
    b"\r\n\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b"Content-Length: ",
    b"l: ",
    b"-1",
    b"0",
    b"65536",
    b"99999999999",
    b"4294967296",
    b" SIP/2.0",
    b"SIP/2.0 ",
    b"INVITE ",
    b"\xff",
    b"\x16\x03\x01",
    b"Content-Length: 0\r\n\r\n",
    b"\r\nContent_Length: 0",
    b"\r\n Content-Length: 0",
    b"\r\n\tl: 0",
    b"\r\nl : 0",
    b"\r\nl: 0",
    b"\r\nContent-Length:\r\n 5",
    b"+",
    b" :",
    b"_",
    b"\r\n ",
    b"l: 0 ",
]


@st.composite
def mutated_seeds(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 5))):
        op = draw(
            st.sampled_from(["flip", "token", "delete", "duplicate", "splice", "cut", "digits"])
        )
        i = draw(st.integers(0, len(data)))
        if op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "token":
            data[i:i] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[i:i] = data[i : i + draw(st.integers(1, 200))]
        elif op == "splice":
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            data[i:] = other[draw(st.integers(0, len(other))) :]
        elif op == "cut":
            del data[i:]
        elif op == "digits":
            at = data.find(b"ength:")
            if at >= 0:
                end = data.find(b"\r\n", at)
                data[at + 6 : end if end >= 0 else len(data)] = draw(
                    st.sampled_from(
                        [
                            b" -5",
                            b" 1e3",
                            b" 00000000000",
                            b" 007",
                            b" 65535",
                            b" 0 0",
                            b"\t9999999999",
                            b" \x00",
                        ]
                    )
                )
    if draw(st.booleans()):
        data += SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    return bytes(data)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


framers = st.builds(
    lambda size, ping, drop, chunks: SipFramer(
        max_msg_size=size, pingpong=ping, crlf_drop=drop, max_chunks=chunks
    ),
    st.sampled_from([1024, 4096, 65535]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, 1, 2, 4, 16]),
)


def run(framer: SipFramer, pieces: list[bytes]) -> list[Event]:
    """Feed like the relay does: stop at the first framing error (the connection closes)."""
    out: list[Event] = []
    for piece in pieces:
        events = framer.feed(piece)
        for ev in events:
            assert isinstance(ev, EVENT_TYPES), ev
        errors = [i for i, ev in enumerate(events) if isinstance(ev, FramingError)]
        out += events
        if errors:
            assert errors == [len(events) - 1]  # the error ends the batch
            err = events[-1]
            assert isinstance(err, FramingError)
            assert isinstance(err.kind, FramingErrorKind) and isinstance(err.detail, str)
            assert framer.buffered == 0
            break
        assert framer.buffered <= framer.max_msg_size
    return out


def messages(events: list[Event]) -> list[bytes]:
    return [ev.data for ev in events if isinstance(ev, Message)]


@given(st.data(), mutated_seeds(), framers)
@FUZZ
def test_mutated_corpus_in_random_reads(
    data: st.DataObject, stream: bytes, framer: SipFramer
) -> None:
    events = run(framer, data.draw(splits(stream)))
    pos = 0
    for msg in messages(events):
        assert len(msg) <= framer.max_msg_size
        assert msg[0] not in b"\r\n \t" and b"\r\n\r\n" in msg
        found = stream.find(msg, pos)  # byte for byte, in stream order
        assert found >= 0
        pos = found + len(msg)
        # a message the framer returned is, alone, exactly one message
        again = SipFramer(max_msg_size=framer.max_msg_size, max_chunks=None).feed(msg)
        assert again == [Message(msg)]
    for ev in events:
        if isinstance(ev, KeepAlive):
            assert ev.data and set(ev.data) <= set(b"\r\n \t")
        if isinstance(ev, Dropped):
            assert ev.size > 0 and framer.crlf_drop


@given(st.data(), mutated_seeds(), st.sampled_from([1024, 65535]))
@FUZZ
def test_splitting_never_changes_the_messages(
    data: st.DataObject, stream: bytes, size: int
) -> None:
    whole = run(SipFramer(max_msg_size=size, max_chunks=None), [stream])
    split = run(SipFramer(max_msg_size=size, max_chunks=None), data.draw(splits(stream)))
    a, b = messages(whole), messages(split)
    whole_failed = any(isinstance(ev, FramingError) for ev in whole)
    split_failed = any(isinstance(ev, FramingError) for ev in split)
    if not whole_failed and not split_failed:
        assert a == b
    else:  # the same messages up to where one of them stopped
        n = min(len(a), len(b))
        assert a[:n] == b[:n]
        assert len(a if whole_failed else b) <= len(b if whole_failed else a)


@given(st.binary(max_size=3000), st.integers(1, 64), framers)
@FUZZ
def test_random_bytes(data: bytes, step: int, framer: SipFramer) -> None:
    run(framer, [data[i : i + step] for i in range(0, len(data), step)])


LENGTH_NAMES = [
    b"Content-Length",
    b"content-length",
    b"CONTENT-LENGTH",
    b"Content_Length",
    b"l",
    b"L",
    b"Content-Lengthx",
    b"Content-Lengt",
    b"XContent-Length",
]
LENGTH_VALUES = [
    b"0",
    b"5",
    b"05",
    b"0005",
    b"+5",
    b"-5",
    b"5 ",
    b"5\t",
    b"5x",
    b"5 6",
    b"",
    b"99999999999",
    b"0x5",
    b"5\r\n 6",
    b"\r\n 5",
    "\u0665".encode(),
]
WS = [b"", b" ", b"\t", b"  ", b"\r\n ", b"\r\n\t"]


@st.composite
def length_lines(draw: st.DrawFn) -> bytes:
    indent = draw(st.sampled_from([b"", b"", b"", b" ", b"\t", b"  "]))
    name = draw(st.sampled_from(LENGTH_NAMES))
    before = draw(st.sampled_from([*WS[:4], b"", b"", *WS[4:]]))
    after = draw(st.sampled_from(WS))
    value = draw(st.sampled_from(LENGTH_VALUES))
    return indent + name + before + b":" + after + value


@st.composite
def length_messages(draw: st.DrawFn) -> bytes:
    """A message with 0 to 3 length lines of any spelling among its headers, and a body."""
    start = draw(
        st.sampled_from(
            [
                b"OPTIONS sip:x SIP/2.0",
                b"SIP/2.0 200 OK",
                b"l: 0 SIP/2.0",
                b"Content_Length: 0 SIP/2.0",
                b"CANCEL sip:x SIP/2.0",
                b"lala sip:x SIP/2.0",
            ]
        )
    )
    headers = [
        b"Via: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK1",
        b"Call-ID: c@x",
        b"CSeq: 1 OPTIONS",
        b"Subject: a\r\n folded",
        b"X-L: 1",
    ]
    for line in draw(st.lists(length_lines(), max_size=3)):
        headers.insert(draw(st.integers(0, len(headers))), line)
    body = draw(
        st.sampled_from(
            [b"", b"12345", b"0123456789", b"INVITE sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\n"]
        )
    )
    return start + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


@given(st.lists(length_messages(), min_size=1, max_size=3), st.booleans())
@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_servers_frame_it_the_same(msgs: list[bytes], byte_by_byte: bool) -> None:
    """A message tlstrace relays is, for every server, exactly that message: none of them
    can find a different end, and so none can see a message tlstrace did not frame."""
    stream = b"".join(msgs)
    pieces = [stream[i : i + 1] for i in range(len(stream))] if byte_by_byte else [stream]
    for msg in messages(run(SipFramer(max_chunks=None), pieces)):
        for name, server in SERVERS.items():
            assert server(msg + stream) == len(msg), (name, msg)


@pytest.mark.parametrize("name", sorted(n for n in SEEDS if n.startswith("ok--")))
def test_servers_agree_on_the_ok_seeds(name: str) -> None:
    for msg in messages(SipFramer(max_chunks=None).feed(SEEDS[name])):
        for server_name, server in SERVERS.items():
            assert server(msg) == len(msg), server_name
