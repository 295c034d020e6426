"""The TLS server side: SNI domains, client certificates, versions, handshake timeout."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import SipBackend
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, client_context, request

Factory = Callable[..., RelayProcess]


def domain(pki: Pki, name: str, cn: str, sni: list[str], **extra: Any) -> dict[str, Any]:
    files = pki.leaf(cn, names=[cn], tag=f"{name}-{cn}")
    return {
        "name": name,
        "match_sip_domain": sni,
        "certificate": str(files.cert),
        "private_key": str(files.key),
        **extra,
    }


def peer_cn(client: TlsClient) -> str:
    der = client.sock.getpeercert(binary_form=True)
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def sni_relay(relay_factory: Factory, backend: SipBackend, pki: Pki) -> RelayProcess:
    return relay_factory(
        {
            "server_domain": [
                domain(pki, "default", "default.example", ["*"]),
                domain(pki, "alpha", "alpha.example", ["alpha.example", "sip.alpha.example"]),
                domain(pki, "wild", "any.beta.example", ["*.beta.example"]),
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


@pytest.mark.parametrize(
    ("sni", "cn"),
    [
        ("alpha.example", "alpha.example"),
        ("SIP.ALPHA.example", "alpha.example"),
        ("x.beta.example", "any.beta.example"),
        ("other.example", "default.example"),
        (None, "default.example"),
    ],
)
def test_sni_selects_the_domain(sni_relay: RelayProcess, sni: str | None, cn: str) -> None:
    with TlsClient(sni_relay.port(), server_hostname=sni) as client:
        assert peer_cn(client) == cn
        client.send(request())
        client.recv_messages(1)


def test_unknown_sni_refused_without_catch_all(
    relay_factory: Factory, backend: SipBackend, pki: Pki
) -> None:
    relay = relay_factory(
        {
            "server_domain": [domain(pki, "default", "only.example", ["only.example", "none"])],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    with TlsClient(relay.port(), server_hostname="only.example") as client:
        assert peer_cn(client) == "only.example"
    with TlsClient(relay.port()) as client:  # no SNI: "none" matches
        assert peer_cn(client) == "only.example"
    with pytest.raises(ssl.SSLError, match=r"UNRECOGNIZED_NAME|unrecognized name"):
        TlsClient(relay.port(), server_hostname="stranger.example")
    relay.wait_log("handshake failed: unrecognized_name")


@pytest.fixture
def mtls_relay(
    relay_factory: Factory, backend: SipBackend, pki: Pki, request: pytest.FixtureRequest
) -> RelayProcess:
    return relay_factory(
        {
            "server_domain": [
                domain(
                    pki,
                    "default",
                    "mtls.example",
                    ["*"],
                    client_cert=request.param,
                    ca_list=str(pki.ca_file),
                )
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


@pytest.mark.parametrize("mtls_relay", ["required"], indirect=True)
def test_client_certificate_required(mtls_relay: RelayProcess, pki: Pki) -> None:
    phone = pki.leaf("phone1.example", client=True)
    ctx = client_context(cert=str(phone.cert), key=str(phone.key))
    with TlsClient(mtls_relay.port(), ctx=ctx) as client:
        client.send(request())
        assert client.recv_messages(1)[0].startswith(b"SIP/2.0 200")
    # no certificate: TLS 1.3 clients learn it on their first read
    with TlsClient(mtls_relay.port()) as client:
        client.send(request())
        assert client.wait_closed()
    mtls_relay.wait_log("handshake failed: certificate_required")
    # a certificate from a CA the relay does not trust
    rogue = pki.leaf("rogue.example", client=True, untrusted=True)
    ctx = client_context(cert=str(rogue.cert), key=str(rogue.key))
    with TlsClient(mtls_relay.port(), ctx=ctx) as client:
        client.send(request())
        assert client.wait_closed()
    mtls_relay.wait_log("handshake failed: unknown_ca")


@pytest.mark.parametrize("mtls_relay", ["optional"], indirect=True)
def test_client_certificate_optional(mtls_relay: RelayProcess, pki: Pki) -> None:
    phone = pki.leaf("phone2.example", client=True)
    ctx = client_context(cert=str(phone.cert), key=str(phone.key))
    for context in (ctx, client_context()):
        with TlsClient(mtls_relay.port(), ctx=context) as client:
            client.send(request())
            assert client.recv_messages(1)[0].startswith(b"SIP/2.0 200")


def test_version_limits(relay_factory: Factory, backend: SipBackend, pki: Pki) -> None:
    relay = relay_factory(
        {
            "server_domain": [domain(pki, "default", "v13.example", ["*"], min_version="TLSv1.3")],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    with TlsClient(relay.port()) as client:
        assert client.sock.version() == "TLSv1.3"
    old = client_context(max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        TlsClient(relay.port(), ctx=old)
    relay.wait_log("handshake failed: unsupported_version")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_default_versions_are_1_2_to_1_3(relay: RelayProcess) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(min_version=version, max_version=version)
        with TlsClient(relay.port(), ctx=ctx) as client:
            assert client.sock.version() == version.name.replace("_", ".")
            client.send(request())
            client.recv_messages(1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        TlsClient(relay.port(), ctx=ctx)


def test_cipher_list(relay_factory: Factory, backend: SipBackend, pki: Pki) -> None:
    relay = relay_factory(
        {
            "server_domain": [
                domain(
                    pki,
                    "default",
                    "c.example",
                    ["*"],
                    max_version="TLSv1.2",
                    ciphers_list="ECDHE-ECDSA-CHACHA20-POLY1305",
                )
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    with TlsClient(relay.port()) as client:
        assert client.sock.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    ctx = client_context()
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        TlsClient(relay.port(), ctx=ctx)
    relay.wait_log("handshake failed: no_shared_cipher")


def test_handshake_timeout(relay_factory: Factory, backend: SipBackend) -> None:
    relay = relay_factory(
        {"tls_handshake_timeout": 300, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    stalled = socket.create_connection(("127.0.0.1", relay.port()))
    stalled.sendall(b"\x16\x03\x01\x00\x10")  # a record header, then nothing
    stalled.settimeout(10)
    started = time.monotonic()
    assert stalled.recv(100) == b""
    assert time.monotonic() - started < 9
    relay.wait_log("handshake failed: handshake_timeout")
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (request(), "plain_sip"),
        (b"GET / HTTP/1.1\r\n\r\n", "not_tls"),
        (b"\x80\x2e\x01\x03\x00" + bytes(45), "unsupported_version"),
    ],
)
def test_not_tls(relay: RelayProcess, payload: bytes, reason: str) -> None:
    with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as s:
        s.sendall(payload)
        assert s.recv(100) == b""
    relay.wait_log(f"handshake failed: {reason}")


@pytest.mark.parametrize("tickets", [0, 2])
def test_session_tickets_and_resumption(
    relay_factory: Factory, backend: SipBackend, pki: Pki, tickets: int
) -> None:
    relay = relay_factory(
        {
            "server_domain": [
                domain(pki, "default", "resume.example", ["*"], session_tickets=tickets)
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    ctx = client_context()
    with TlsClient(relay.port(), ctx=ctx) as first:
        first.send(request())
        first.recv_messages(1)  # the tickets come with the first response
        session = first.sock.session
    raw = socket.create_connection(("127.0.0.1", relay.port()), timeout=10)
    again = ctx.wrap_socket(raw, session=session)
    assert again.session_reused == (tickets > 0)
    again.close()


def test_chain_is_sent(
    relay_factory: Factory, backend: SipBackend, pki: Pki, tmp_path: Path
) -> None:
    """A certificate issued by an intermediate CA verifies at a client that only trusts the
    root once `chain` names the intermediate."""
    from tlstrace.tls.certgen import issue, make_ca

    intermediate = make_ca("tlstrace intermediate", issuer=pki.ca)
    leaf = issue("chained.example", issuer=intermediate, names=["chained.example"])
    cert, key, chain = tmp_path / "leaf.pem", tmp_path / "leaf.key", tmp_path / "chain.pem"
    leaf.write(cert, key)
    chain.write_bytes(intermediate.cert_pem())
    verify = client_context(ca=str(pki.ca_file), check_hostname=True)
    for with_chain in (False, True):
        relay = relay_factory(
            {
                "server_domain": [
                    {
                        "name": "default",
                        "certificate": str(cert),
                        "private_key": str(key),
                        **({"chain": str(chain)} if with_chain else {}),
                    }
                ],
                "listener": [RelayProcess.tls_listener(backend.port)],
            }
        )
        if with_chain:
            with TlsClient(relay.port(), ctx=verify, server_hostname="chained.example") as c:
                c.send(request())
                c.recv_messages(1)
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                TlsClient(relay.port(), ctx=verify, server_hostname="chained.example")
        relay.stop()
