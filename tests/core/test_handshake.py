"""Handshakes between a client TlsSession and the relay's TlsCore, in memory."""

from __future__ import annotations

import ssl

import pytest

from tests.core.harness import LISTENER, FakeClock, Observer, Pki, Wire, make_ctx
from tlstrace.relay.connection import CloseReason
from tlstrace.tls.contexts import ServerContexts
from tlstrace.tls.failures import HandshakeFailure
from tlstrace.tls.keylog import KeyLogTap
from tlstrace.tls.session import OPEN

V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
INVITE = b"INVITE sip:b@x SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("version", [V12, V13])
def test_a_handshake_opens_the_connection_with_its_facts(
    pki: Pki, clock: FakeClock, observer: Observer, version: ssl.TLSVersion
) -> None:
    ctx = make_ctx(clock, observer)
    contexts = pki.server_contexts(pki.domain("a", match_sip_domain=["*"]))
    wire = Wire(ctx, contexts, pki.client_context(version=version))
    conn = wire.conn
    assert wire.opened == 1 and wire.server.state == OPEN
    assert conn.state == "open"
    assert conn.tls_version == ("TLSv1.3" if version is V13 else "TLSv1.2")
    assert conn.cipher and conn.sni == "a.example.com" and conn.server_domain == "a"
    assert conn.local_cert is not None and conn.handshake_ms is not None
    assert conn.peer_cert_der is None and not conn.resumed
    assert observer.done == [conn]
    assert wire.client_done is not None and wire.client_done.peer_cert_der
    hs = ctx.stats.handshakes
    assert sum(n for k, n in hs.items() if k[:3] == (LISTENER, "inbound", "success")) == 1
    assert wire.core.next_deadline() is not None  # the idle lifetime


def test_tls13_tickets_wait_for_the_first_write(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock)
    contexts = pki.server_contexts(pki.domain("a"))
    wire = Wire(ctx, contexts, pki.client_context(version=V13))
    assert wire.server.outgoing.pending > 0  # the session tickets
    assert wire.from_relay() == b""
    wire.relay_send([OK], 1)
    assert wire.client_got == OK
    assert wire.server.outgoing.pending == 0


@pytest.mark.parametrize("version", [V12, V13])
def test_a_session_resumes(pki: Pki, clock: FakeClock, version: ssl.TLSVersion) -> None:
    ctx = make_ctx(clock)
    contexts = pki.server_contexts(pki.domain("a"))
    client_ctx = pki.client_context(version=version)
    first = Wire(ctx, contexts, client_ctx)
    first.relay_send([OK], 1)  # carries the TLS 1.3 tickets
    obj = first.client.obj
    assert obj is not None and obj.session is not None
    second = Wire(ctx, contexts, client_ctx, ssl_session=obj.session)
    assert second.conn.resumed and second.conn.sni == "a.example.com"


def test_client_certificates(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer)
    contexts = pki.server_contexts(pki.domain("a", client_cert="required", ca_list=pki.ca_file))
    wire = Wire(ctx, contexts, pki.client_context(cert="client"))
    assert wire.conn.state == "open" and wire.conn.peer_cert_der
    bare = Wire(ctx, contexts, pki.client_context(version=V13))
    assert bare.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed[-1][0] is HandshakeFailure.CERTIFICATE_REQUIRED


def two_domains(pki: Pki) -> ServerContexts:
    return pki.server_contexts(
        pki.domain("a", match_sip_domain=["a.example.com"]),
        pki.domain("b", match_sip_domain=["b.example.com", "none"]),
    )


def test_the_sni_chooses_the_domain(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock)
    contexts = two_domains(pki)
    for name in ("a", "b"):
        wire = Wire(ctx, contexts, pki.client_context(), sni=f"{name}.example.com")
        assert wire.conn.server_domain == name and wire.conn.sni == f"{name}.example.com"
    nosni = Wire(ctx, contexts, pki.client_context(verify=False), sni=None)
    assert nosni.conn.server_domain == "b" and nosni.conn.sni is None


def test_a_session_does_not_resume_in_another_domain(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock)
    contexts = two_domains(pki)
    client_ctx = pki.client_context(verify=False)
    first = Wire(ctx, contexts, client_ctx, sni="a.example.com")
    first.relay_send([OK], 1)
    assert first.client.obj is not None
    other = Wire(
        ctx, contexts, client_ctx, sni="b.example.com", ssl_session=first.client.obj.session
    )
    assert other.conn.state == "open" and not other.conn.resumed


def test_an_unknown_name_is_refused(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer)
    wire = Wire(ctx, two_domains(pki), pki.client_context(verify=False), sni="c.example.com")
    assert wire.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed == [(HandshakeFailure.UNRECOGNIZED_NAME, observer.failed[0][1])]
    assert wire.conn.sni == "c.example.com" and wire.conn.client_random
    assert wire.client_failed is not None


def test_a_server_name_that_is_not_ascii_is_refused_quietly(
    pki: Pki, clock: FakeClock, observer: Observer, capfd: pytest.CaptureFixture[str]
) -> None:
    """RFC 6066 host names are ASCII. CPython's SNI callback cannot decode another one and
    prints a traceback on stderr for each: the relay refuses it before OpenSSL sees it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = pki.client_context(verify=False).wrap_bio(
        incoming, outgoing, server_hostname="aaaa.example.com"
    )
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello.count(b"aaaa.example.com") == 1
    hello = hello.replace(b"aaaa.example.com", "\u00e9\u00e9.example.com".encode())
    ctx = make_ctx(clock, observer)
    wire = Wire(ctx, two_domains(pki), pki.client_context(), start_client=False)
    assert wire.to_relay(hello) == []
    assert wire.close_reason is CloseReason.HANDSHAKE_FAILED
    kind, message = observer.failed[0]
    assert kind is HandshakeFailure.UNRECOGNIZED_NAME
    assert "not ASCII" in message and "\\xc3\\xa9" in message
    assert capfd.readouterr().err == ""


SSLV2_HELLO = bytes.fromhex("802e0100020015000000100700c0030080010080060040040080020080") + bytes(
    16
)


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (b"OPTIONS sip:x SIP/2.0\r\n", HandshakeFailure.PLAIN_SIP),
        (b"GET / HTTP/1.1\r\n\r\n", HandshakeFailure.NOT_TLS),
        (SSLV2_HELLO, HandshakeFailure.UNSUPPORTED_VERSION),
    ],
)
def test_first_bytes_that_are_not_a_client_hello(
    pki: Pki, clock: FakeClock, observer: Observer, first: bytes, kind: HandshakeFailure
) -> None:
    ctx = make_ctx(clock, observer)
    wire = Wire(ctx, pki.server_contexts(pki.domain("a")), pki.client_context(), start_client=False)
    assert wire.to_relay(first) == []
    assert wire.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed[0][0] is kind
    assert ctx.stats.handshake_failures[LISTENER, "inbound", kind.value] == 1


def test_a_client_hello_too_large_to_read(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer)
    wire = Wire(ctx, two_domains(pki), pki.client_context(), start_client=False)
    body = b"\x01\xff\xff\xff" + bytes(16000 - 4)
    record = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    more = b"\x16\x03\x01" + (16000).to_bytes(2, "big") + bytes(16000)
    wire.to_relay(record)
    wire.to_relay(more)
    assert wire.close_reason is None
    wire.to_relay(more)
    assert wire.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed[0][0] is HandshakeFailure.HELLO_TOO_LARGE


def test_negotiation_failures(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer)
    cases = [
        (
            pki.domain("a", max_version="TLSv1.2", ciphers_list="ECDHE-ECDSA-AES128-GCM-SHA256"),
            pki.client_context(version=V12, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"),
            HandshakeFailure.NO_SHARED_CIPHER,
        ),
        (
            pki.domain("a", min_version="TLSv1.3"),
            pki.client_context(version=V12),
            HandshakeFailure.UNSUPPORTED_VERSION,
        ),
        (pki.domain("rogue"), pki.client_context(), HandshakeFailure.UNKNOWN_CA),
    ]
    for domain, client_ctx, kind in cases:
        observer.failed.clear()
        wire = Wire(ctx, pki.server_contexts(domain), client_ctx)
        assert wire.close_reason is CloseReason.HANDSHAKE_FAILED, kind
        assert observer.failed[0][0] is kind


def test_the_handshake_times_out(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer, tls_handshake_timeout=2000)
    wire = Wire(ctx, pki.server_contexts(pki.domain("a")), pki.client_context(), start_client=False)
    due = wire.core.next_deadline()
    assert due is not None
    wire.core.handle_timer(due - 0.001)
    assert wire.close_reason is None
    wire.core.handle_timer(due)
    assert wire.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed[0][0] is HandshakeFailure.HANDSHAKE_TIMEOUT
    assert "2000 ms" in observer.failed[0][1]


def test_the_peer_closing(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer)
    contexts = pki.server_contexts(pki.domain("a"))
    probe = Wire(ctx, contexts, pki.client_context(), start_client=False)
    probe.core.connection_lost(None, clock())
    assert probe.close_reason is CloseReason.EOF and not observer.failed  # a port probe
    half = Wire(ctx, contexts, pki.client_context(), start_client=False)
    half.client.start(clock())
    half.to_relay(half.client.data_to_send()[:20])
    half.core.connection_lost(None, clock())
    assert half.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed[0][0] is HandshakeFailure.PEER_CLOSED


def test_session_keys_go_to_their_connection(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock, keys=True)
    contexts = pki.server_contexts(pki.domain("a"))
    assert isinstance(ctx.keylog, KeyLogTap)
    for ident in contexts.identities:
        ctx.keylog.attach(ident.context)
    wire = Wire(ctx, contexts, pki.client_context(version=V13))
    labels = {line.split()[0] for line in wire.conn.keylog}
    assert "CLIENT_TRAFFIC_SECRET_0" in labels and "SERVER_TRAFFIC_SECRET_0" in labels
    assert ctx.keylog.current is None


class WrongChooser:
    """Picks domain a whatever the name: as if tlstrace had read another SNI than OpenSSL."""

    def __init__(self, contexts: ServerContexts) -> None:
        self.contexts = contexts

    def select(self, server_name: str | None) -> ssl.SSLContext:
        return self.contexts.select("a.example.com")


def test_an_sni_read_differently_by_openssl_is_refused(
    pki: Pki, clock: FakeClock, observer: Observer
) -> None:
    ctx = make_ctx(clock, observer)
    contexts = two_domains(pki)
    wire = Wire(
        ctx,
        contexts,
        pki.client_context(verify=False),
        sni="b.example.com",
        chooser=WrongChooser(contexts),
    )
    assert wire.close_reason is CloseReason.HANDSHAKE_FAILED
    assert observer.failed[0][0] is HandshakeFailure.SNI_MISMATCH
    assert "'b.example.com'" in observer.failed[0][1]
