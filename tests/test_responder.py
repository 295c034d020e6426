"""The bench/test SIP responder: the sans-IO `respond`, and one round trip through `serve`."""

from __future__ import annotations

import asyncio

import pytest

from tlstrace.responder import main, respond, serve, to_tag
from tlstrace.sip.framing import Message, SipFramer

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK-1\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.2:5061;branch=z9hG4bK-2\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: Alice <sip:alice@example.com>;tag=a1\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b"Call-ID: call-1@10.0.0.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1:5061;transport=tls>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def headers(response: bytes) -> list[tuple[str, str]]:
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep and body == b""
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.append((name.decode(), value.strip().decode()))
    return out


def test_invite_gets_200_with_copied_headers_and_a_to_tag() -> None:
    resp = respond(INVITE)
    assert resp is not None
    assert resp.startswith(b"SIP/2.0 200 OK\r\n")
    h = headers(resp)
    assert [v for n, v in h if n == "Via"] == [
        "SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK-1",
        "SIP/2.0/TLS 10.0.0.2:5061;branch=z9hG4bK-2",
    ]
    assert ("From", "Alice <sip:alice@example.com>;tag=a1") in h
    assert ("To", "Bob <sip:bob@example.com>;tag=" + to_tag(b"call-1@10.0.0.1").decode()) in h
    assert ("Call-ID", "call-1@10.0.0.1") in h
    assert ("CSeq", "1 INVITE") in h
    assert ("Content-Length", "0") in h
    names = {n for n, _ in h}
    assert "Contact" not in names and "Max-Forwards" not in names and "Content-Type" not in names


def test_response_is_one_framable_message() -> None:
    resp = respond(INVITE)
    assert resp is not None
    events = SipFramer().feed(resp)
    assert events == [Message(resp)]


def test_existing_to_tag_is_kept() -> None:
    req = INVITE.replace(b"To: Bob <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=b7")
    resp = respond(req)
    assert resp is not None
    assert ("To", "<sip:bob@example.com>;tag=b7") in headers(resp)


def test_tag_inside_the_uri_is_not_a_to_tag() -> None:
    req = INVITE.replace(b"To: Bob <sip:bob@example.com>", b"To: <sip:bob@example.com;tag=x>")
    resp = respond(req)
    assert resp is not None
    to = dict(headers(resp))["To"]
    assert to == "<sip:bob@example.com;tag=x>;tag=" + to_tag(b"call-1@10.0.0.1").decode()


def test_compact_header_names_are_copied_under_full_names() -> None:
    req = (
        b"OPTIONS sip:srv SIP/2.0\r\n"
        b"v: SIP/2.0/TCP h;branch=z9hG4bK-c\r\n"
        b"f: <sip:a@h>;tag=1\r\n"
        b"t: <sip:srv>\r\n"
        b"i: c1\r\n"
        b"CSeq: 9 OPTIONS\r\n"
        b"l: 0\r\n\r\n"
    )
    resp = respond(req)
    assert resp is not None
    h = dict(headers(resp))
    assert h["Via"] == "SIP/2.0/TCP h;branch=z9hG4bK-c"
    assert h["From"] == "<sip:a@h>;tag=1"
    assert h["To"] == "<sip:srv>;tag=" + to_tag(b"c1").decode()
    assert h["Call-ID"] == "c1"
    assert h["CSeq"] == "9 OPTIONS"


def test_header_names_are_case_insensitive_and_folding_is_joined() -> None:
    req = (
        b"BYE sip:b@h SIP/2.0\r\n"
        b"VIA: SIP/2.0/TCP h;branch=z9hG4bK-f\r\n"
        b"from : <sip:a@h>;tag=1\r\n"
        b"To: <sip:b@h>\r\n"
        b" ;tag=2\r\n"
        b"call-id: c2\r\n"
        b"cseq: 2 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    resp = respond(req)
    assert resp is not None
    h = dict(headers(resp))
    assert h["Via"] == "SIP/2.0/TCP h;branch=z9hG4bK-f"
    assert h["From"] == "<sip:a@h>;tag=1"
    assert h["To"] == "<sip:b@h> ;tag=2"
    assert h["CSeq"] == "2 BYE"


def test_to_tag_is_stable_per_call_id() -> None:
    assert to_tag(b"x") == to_tag(b"x")
    assert to_tag(b"x") != to_tag(b"y")
    assert len(to_tag(b"x")) == 8


@pytest.mark.parametrize(
    "message",
    [
        INVITE.replace(b"INVITE sip:bob@example.com", b"ACK sip:bob@example.com"),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        b"SIP/2.0 180 Ringing\r\nContent-Length: 0\r\n\r\n",
        b"garbage\r\n\r\n",
        b"",
    ],
    ids=["ack", "200", "180", "garbage", "empty"],
)
def test_no_answer(message: bytes) -> None:
    assert respond(message) is None


def test_server_answers_pipelined_requests_and_skips_ack() -> None:
    ack = INVITE.replace(b"INVITE sip:bob@example.com", b"ACK sip:bob@example.com")
    options = INVITE.replace(b"INVITE sip:bob@example.com", b"OPTIONS sip:bob@example.com")

    async def run() -> list[bytes]:
        server = await serve("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # split mid-message, to exercise the framer
            stream = INVITE + ack + options
            writer.write(stream[:50])
            await writer.drain()
            writer.write(stream[50:])
            framer = SipFramer()
            got: list[bytes] = []
            while len(got) < 2:
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data
                got += [ev.data for ev in framer.feed(data) if isinstance(ev, Message)]
            writer.close()
            await writer.wait_closed()
            return got
        finally:
            server.close()
            await server.wait_closed()

    got = asyncio.run(run())
    assert len(got) == 2
    assert all(g.startswith(b"SIP/2.0 200 OK\r\n") for g in got)
    assert b"CSeq: 1 INVITE\r\n" in got[0]
    assert got[1] == respond(options)


def test_cli_rejects_a_bad_listen_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--listen", "nope"])
    assert "HOST:PORT" in capsys.readouterr().err


def test_cached_answers_match_and_the_memo_stays_bounded() -> None:
    from tlstrace import responder

    assert responder.respond_cached(INVITE) == respond(INVITE)
    assert responder.respond_cached(INVITE) == respond(INVITE)
    ack = INVITE.replace(b"INVITE sip:bob@example.com", b"ACK sip:bob@example.com")
    assert responder.respond_cached(ack) is None
    for i in range(responder._MEMO_MAX + 10):
        req = INVITE.replace(b"call-1@", f"call-{i}@".encode())
        assert responder.respond_cached(req) == respond(req)
    assert len(responder._MEMO) <= responder._MEMO_MAX
