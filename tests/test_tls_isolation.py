"""TLS server domains are isolated: a session resumes only in the domain that created it.

One listener, three server domains chosen by SNI: `a.example` trusts the test CA, `b.example`
only another CA, and a catch-all `*` trusts the test CA too. A phone with a certificate from the
test CA takes a session on `a.example`, then offers it with another SNI. Before tlstrace chose
the domain from the ClientHello, the session was looked up (and the ticket decrypted) by the
listener's first context, and the SNI callback switched domains afterwards: the resumption
succeeded on `b.example` without any certificate check.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, client_context, request
from tests.test_tls_server import Factory, domain, peer_cn

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3

#: (TLS version, session_tickets): tickets in TLS 1.2 and 1.3, session ids in TLS 1.2
MECHANISMS = [
    pytest.param(TLS12, 2, id="tls1.2-tickets"),
    pytest.param(TLS12, 0, id="tls1.2-session-ids"),
    pytest.param(TLS13, 2, id="tls1.3-tickets"),
]


def isolated_relay(
    factory: Factory, backend_port: int, pki: Pki, client_cert: str, tickets: int
) -> RelayProcess:
    def dom(name: str, cn: str, sni: list[str], ca: str) -> dict[str, Any]:
        extra: dict[str, Any] = {"client_cert": client_cert, "session_tickets": tickets}
        if client_cert != "off":
            extra["ca_list"] = ca
        return domain(pki, name, cn, sni, **extra)

    return factory(
        {
            "server_domain": [
                dom("tenant-a", "a.example", ["a.example"], str(pki.ca_file)),
                dom("tenant-b", "b.example", ["b.example"], str(pki.other_ca_file)),
                dom("catch-all", "any.example", ["*"], str(pki.ca_file)),
            ],
            "listener": [RelayProcess.tls_listener(backend_port)],
        }
    )


def phone_context(pki: Pki | None, version: ssl.TLSVersion | None, tickets: int) -> ssl.SSLContext:
    """A client of this TLS version (tickets off when `tickets` is 0), with the certificate of
    tenant A's phone when a PKI is given."""
    files = pki.leaf("phone-of-tenant-a", client=True, tag="phone-of-tenant-a") if pki else None
    ctx = client_context(
        cert=str(files.cert) if files else None,
        key=str(files.key) if files else None,
        min_version=version,
        max_version=version,
    )
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def connections(relay: RelayProcess) -> list[dict[str, Any]]:
    answer = httpx.get(f"{relay.api_url}/api/connections", timeout=5)
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()
    return found


def take_session(
    relay: RelayProcess, ctx: ssl.SSLContext, sni: str, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession, bool]:
    """A connection that completes one request; its session (TLS 1.3 tickets arrive with the
    answer) and whether it was resumed."""
    with TlsClient(relay.port(), ctx=ctx, server_hostname=sni, session=session) as client:
        client.send(request())
        assert client.recv_messages(1)[0].startswith(b"SIP/2.0 200")
        resumed = client.sock.session_reused
        got = client.sock.session
        client.close_notify()
    assert got is not None
    return got, resumed


def full_handshake_on(
    relay: RelayProcess, ctx: ssl.SSLContext, sni: str, session: ssl.SSLSession
) -> dict[str, Any]:
    """Offer `session` with another SNI: a full handshake on that domain, which admits the
    client; its certificate and its entry in /api/connections."""
    with TlsClient(relay.port(), ctx=ctx, server_hostname=sni, session=session) as client:
        assert not client.sock.session_reused
        cn = peer_cn(client)
        client.send(request())
        assert client.recv_messages(1)[0].startswith(b"SIP/2.0 200")
        [conn] = [c for c in connections(relay) if c["sni"] == sni and c["state"] == "open"]
    assert conn["resumed"] is False
    return {**conn, "certificate_cn": cn}


def refused_on(relay: RelayProcess, ctx: ssl.SSLContext, sni: str, session: ssl.SSLSession) -> bool:
    """Offer `session` with another SNI: a full handshake, which that domain refuses (TLS 1.3
    clients learn of it on their first read)."""
    try:
        with TlsClient(relay.port(), ctx=ctx, server_hostname=sni, session=session) as client:
            assert not client.sock.session_reused
            client.send(request())
            return client.wait_closed()
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.parametrize(("version", "tickets"), MECHANISMS)
def test_resumption_stays_in_its_domain(
    relay_factory: Factory, backend: Any, pki: Pki, version: ssl.TLSVersion, tickets: int
) -> None:
    relay = isolated_relay(relay_factory, backend.port, pki, "required", tickets)
    ctx = phone_context(pki, version, tickets)
    session, _ = take_session(relay, ctx, "a.example")
    # inside its domain the session resumes (phones and the handshake cost depend on it)
    session, resumed = take_session(relay, ctx, "a.example", session)
    assert resumed, "a session must resume in the domain that created it"

    # another domain whose CA does not know the phone: a full handshake, which fails
    assert refused_on(relay, ctx, "b.example", session)
    relay.wait_log("handshake failed: unknown_ca")
    assert "phone-of-tenant-a" not in {c.get("peer_subject") for c in connections(relay)}

    # a domain that would accept the phone: still a full handshake, with its own certificate
    conn = full_handshake_on(relay, ctx, "other.example", session)
    assert (conn["certificate_cn"], conn["server_domain"]) == ("any.example", "catch-all")
    assert conn["peer_subject"] and "phone-of-tenant-a" in conn["peer_subject"]


@pytest.mark.parametrize(("version", "tickets"), MECHANISMS)
def test_resumption_stays_in_its_domain_without_client_certs(
    relay_factory: Factory, backend: Any, pki: Pki, version: ssl.TLSVersion, tickets: int
) -> None:
    relay = isolated_relay(relay_factory, backend.port, pki, "off", tickets)
    ctx = phone_context(None, version, tickets)
    session, _ = take_session(relay, ctx, "a.example")
    session, resumed = take_session(relay, ctx, "a.example", session)
    assert resumed
    conn = full_handshake_on(relay, ctx, "b.example", session)
    assert (conn["certificate_cn"], conn["server_domain"]) == ("b.example", "tenant-b")
    # and the session taken on b resumes on b only
    session_b, _ = take_session(relay, ctx, "b.example")
    _, resumed = take_session(relay, ctx, "b.example", session_b)
    assert resumed
    _, resumed = take_session(relay, ctx, "a.example", session_b)
    assert not resumed


@pytest.mark.parametrize(("version", "tickets"), MECHANISMS)
def test_each_domain_keeps_its_client_certificate_policy(
    relay_factory: Factory, backend: Any, pki: Pki, version: ssl.TLSVersion, tickets: int
) -> None:
    """Domains on one listener may differ in client_cert (each handshake runs on its domain's
    own context from the start); a session from a domain without client certificates never
    opens one that requires them."""
    extra = {"session_tickets": tickets}
    relay = relay_factory(
        {
            "server_domain": [
                domain(
                    pki,
                    "phones",
                    "phones.example",
                    ["phones.example"],
                    client_cert="required",
                    ca_list=str(pki.ca_file),
                    **extra,
                ),
                domain(pki, "open", "open.example", ["*"], **extra),
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    anonymous = phone_context(None, version, tickets)
    session, _ = take_session(relay, anonymous, "open.example")
    _, resumed = take_session(relay, anonymous, "open.example", session)
    assert resumed
    assert refused_on(relay, anonymous, "phones.example", session)
    relay.wait_log("handshake failed: certificate_required")
    # the phone with its certificate is admitted, and resumes, on its own domain
    ctx = phone_context(pki, version, tickets)
    session, _ = take_session(relay, ctx, "phones.example")
    _, resumed = take_session(relay, ctx, "phones.example", session)
    assert resumed


def test_the_sni_shown_is_the_one_sent_on_a_tls12_resumption(
    relay_factory: Factory, backend: Any, pki: Pki
) -> None:
    """OpenSSL hands the SNI callback the name stored in a TLS 1.2 session when it resumes
    it: /api/connections (and SNI trace filters) must see the name the client sent now."""
    relay = relay_factory(
        {
            "server_domain": [
                domain(pki, "wild", "any.b.example", ["*.b.example"], session_tickets=0),
                domain(pki, "other", "other.example", ["*"], session_tickets=0),
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    ctx = phone_context(None, TLS12, 0)
    session, _ = take_session(relay, ctx, "x.b.example")
    with TlsClient(relay.port(), ctx=ctx, server_hostname="y.b.example", session=session) as client:
        assert client.sock.session_reused
        client.send(request())
        client.recv_messages(1)
        [conn] = [c for c in connections(relay) if c["state"] == "open"]
        assert (conn["sni"], conn["server_domain"], conn["resumed"]) == (
            "y.b.example",
            "wild",
            True,
        )
