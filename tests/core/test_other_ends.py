"""The plain TCP end (PlainCore) and the client side of TlsCore (tlstrace connecting to a peer
or a tls: backend), in memory."""

from __future__ import annotations

import ssl

from tests.core.harness import FakeClock, Observer, Pki, make_ctx
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.core import TlsCore
from tlstrace.relay.plain_core import PlainCore
from tlstrace.tls.certinfo import CertInfo
from tlstrace.tls.session import HandshakeDone, TlsSession

OPTIONS = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


def test_plain_end_frames_leniently(clock: FakeClock) -> None:
    core = PlainCore(make_ctx(clock), "backend")
    assert core.receive(OPTIONS + b"\r\n" + OPTIONS[:10], clock()) == [OPTIONS, b"\r\n"]
    assert core.batch_msgs == 1 and core.partial_since == clock()
    assert core.receive(OPTIONS[10:], clock()) == [OPTIONS]
    assert core.partial_since == 0.0
    # a trusted server's odd start line passes; a missing length does not
    assert core.receive(b"HELLO\r\nContent-Length: 0\r\n\r\n", clock())
    assert core.receive(OPTIONS + b"X sip:y SIP/2.0\r\n\r\n", clock()) == [OPTIONS]
    assert core.batch_msgs == 1
    assert core.close_request == (
        CloseReason.FRAMING_ERROR,
        "from backend: no Content-Length header (required on stream transports)",
        False,
    )
    assert core.ctx.stats.framing_errors["backend_missing_content_length"] == 1


def test_plain_end_timeouts(clock: FakeClock) -> None:
    core = PlainCore(make_ctx(clock, tcp_max_msg_time=2.0, tls_send_timeout=1000), "local")
    core.receive(OPTIONS[:5], clock())
    assert core.next_deadline() == clock() + 2.0
    core.handle_timer(clock.advance(2.5))
    assert core.close_request is not None and core.close_request[0] is CloseReason.MESSAGE_TIMEOUT
    assert core.ctx.stats.framing_errors["local_message_timeout"] == 1
    blocked = PlainCore(make_ctx(clock, tls_send_timeout=1000), "backend")
    blocked.writing_paused(clock())
    blocked.handle_timer(clock.advance(1.5))
    assert blocked.close_request == (
        CloseReason.SEND_TIMEOUT,
        "backend left data unread for over 1000 ms",
        True,
    )


class NoCert:
    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        return None, None


def test_the_client_side_core(pki: Pki, clock: FakeClock) -> None:
    """tlstrace as the TLS client: the peer is a server TlsSession; messages queued while the
    handshake runs leave after it; the peer's keep-alives are not limited."""
    observer = Observer()
    ctx = make_ctx(clock, observer, tls_keepalive_rate=0.1)
    contexts = pki.server_contexts(pki.domain("a"))
    peer = TlsSession(contexts.initial, server_side=True, handshake_timeout_ms=5000, now=clock())
    peer.start(clock())
    conn = Connection("outbound", ("192.0.2.9", 5061), ("", 0), "tcp:127.0.0.1:5060")
    session = TlsSession(
        pki.client_context(),
        server_side=False,
        handshake_timeout_ms=5000,
        now=clock(),
        server_hostname="a.example.com",
    )
    core = TlsCore(ctx, conn, session, NoCert(), direction_in="from_peer", direction_out="to_peer")
    assert core.send([OPTIONS], 1, clock()) == b""  # waits for the handshake
    session.start(clock())
    got = b""
    peer_events = []
    for _ in range(10):
        out = core.data_to_send()
        if out:
            got += b"".join(peer.receive(out, clock()))
            peer_events += peer.pop_events()
        back = peer.data_to_send()
        if back:
            core.receive(back, clock())
        if not out and not back:
            break
    assert conn.state == "open" and conn.sni == "a.example.com"
    assert [type(e) for e in core.pop_events()] == [HandshakeDone]
    assert any(isinstance(e, HandshakeDone) for e in peer_events)
    assert got == OPTIONS and conn.msgs_out == 1
    keepalives = b"".join(peer.send(b"\r\n") for _ in range(20))
    assert core.receive(keepalives, clock()) == [b"\r\n"] * 20
    assert core.close_request is None
    assert ctx.stats.messages["tcp:127.0.0.1:5060", "to_peer"]["OPTIONS"] == 1
