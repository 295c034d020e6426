"""TLS server domains under attack, with legitimate phones alongside.

One listener, three domains with `client_cert = "required"`: `a.example` and the catch-all
trust the test CA, `b.example` only another CA. The attacker holds a certificate from the test
CA: it takes sessions on `a.example` and offers them with SNI `b.example` (TLS 1.2 tickets and
session ids, TLS 1.3 tickets). On the old relay each such resumption succeeded and was relayed.
Now each one is a full handshake that `b.example` refuses (unknown_ca), while the ClientHello
is read by tlstrace however it is cut (records of a few bytes, one byte per TCP segment).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import LegitTraffic, Metrics, connect, real_client_hello, wait_closed
from tests.support.backend import SipBackend
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request
from tests.test_tls_isolation import phone_context
from tests.test_tls_server import domain

Legit = Callable[..., LegitTraffic]
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RelayProcess]:
    def dom(name: str, cn: str, sni: list[str], ca: str, tickets: int) -> dict[str, Any]:
        return domain(
            pki, name, cn, sni, client_cert="required", ca_list=ca, session_tickets=tickets
        )

    with SipBackend() as backend:
        relay = RelayProcess(
            tmp_path_factory.mktemp("isolation"),
            {
                "tls_handshake_timeout": 2000,
                "server_domain": [
                    dom("tenant-a", "a.example", ["a.example"], str(pki.ca_file), 2),
                    dom("tenant-b", "b.example", ["b.example"], str(pki.other_ca_file), 2),
                    dom("catch-all", "any.example", ["*"], str(pki.ca_file), 2),
                ],
                "listener": [RelayProcess.tls_listener(backend.port)],
            },
        )
        relay.backend = backend  # type: ignore[attr-defined]
        try:
            yield relay
        finally:
            relay.stop()


def phone(pki: Pki, version: ssl.TLSVersion | None = None, tickets: bool = True) -> ssl.SSLContext:
    return phone_context(pki, version, 2 if tickets else 0)


def session_on_a(port: int, ctx: ssl.SSLContext) -> ssl.SSLSession:
    with TlsClient(port, ctx=ctx, server_hostname="a.example") as client:
        client.send(request())
        client.recv_messages(1)
        session = client.sock.session
        client.close_notify()
    assert session is not None
    return session


def resume_on_b(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession) -> str:
    """'relayed' if the stolen session carried a request through, else how it ended."""
    try:
        with TlsClient(
            port, ctx=ctx, server_hostname="b.example", session=session, timeout=5
        ) as client:
            client.send(request("OPTIONS", "stolen-session"))
            try:
                client.recv_messages(1, timeout=5)
                return "relayed"
            except (AssertionError, OSError, ssl.SSLError):
                return "refused"
    except (OSError, ssl.SSLError):
        return "refused"


def test_stolen_sessions_never_cross_domains(
    target: RelayProcess, pki: Pki, legit: Legit, record: Record
) -> None:
    port = target.port()
    before = Metrics.scrape(target)
    traffic = legit(port, ctx=phone(pki))  # no SNI: the catch-all domain, which trusts them
    outcomes: dict[str, int] = {}
    attempts = 0
    for version, tickets in ((TLS12, True), (TLS12, False), (TLS13, True)):
        ctx = phone(pki, version, tickets)
        for _ in range(10):
            outcome = resume_on_b(port, ctx, session_on_a(port, ctx))
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            attempts += 1
    result = traffic.check(target.backend)  # type: ignore[attr-defined]
    assert outcomes == {"refused": attempts}
    after = Metrics.scrape(target)
    assert (
        after.delta(
            before, "tlstrace_handshake_failures_total", direction="inbound", reason="unknown_ca"
        )
        == attempts
    )
    assert "stolen-session" not in target.log
    with target.backend.lock:  # type: ignore[attr-defined]
        relayed = [
            m
            for c in target.backend.conns
            for m in c.messages  # type: ignore[attr-defined]
            if b"stolen-session" in m
        ]
    assert relayed == []
    record(
        attempts=attempts,
        refused=outcomes.get("refused", 0),
        legit_sent=result.sent,
        legit_errors=len(result.errors),
    )


def records_of(hello: bytes, size: int) -> bytes:
    """One ClientHello record cut into handshake records of `size` bytes each."""
    body = hello[5:]
    return b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(body[i : i + size])) + body[i : i + size]
        for i in range(0, len(body), size)
    )


def finish_handshake(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            obj.do_handshake()
            sock.sendall(outgoing.read())
            return
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            incoming.write(data)


@pytest.mark.parametrize("cut", ["records-of-7", "one-byte-segments"])
def test_a_cut_hello_reaches_its_domain(target: RelayProcess, pki: Pki, cut: str) -> None:
    """The domain is read from the whole ClientHello however the client cuts it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = phone(pki).wrap_bio(incoming, outgoing, server_hostname="a.example")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    wire = records_of(hello, 7) if cut == "records-of-7" else hello
    with connect(target.port()) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = len(wire) if cut == "records-of-7" else 1
        for i in range(0, len(wire), step):
            sock.sendall(wire[i : i + step])
        finish_handshake(sock, obj, incoming, outgoing)
        cert = obj.getpeercert(binary_form=True)
        assert cert is not None and b"a.example" in cert


def test_a_hello_that_never_ends_is_refused(target: RelayProcess, record: Record) -> None:
    """Handshake records that announce a ClientHello larger than anything real: the relay
    holds at most MAX_HELLO_BYTES of it, then refuses."""
    hello = real_client_hello(server_hostname="a.example")
    body = bytearray(hello[5:])
    body[1:4] = (1 << 24 - 1).to_bytes(3, "big")  # claims 8 MiB
    chunk = bytes(body) + b"\x00" * (16384 - len(body))
    with connect(target.port()) as sock:
        sent = 0
        try:
            for _ in range(6):
                sock.sendall(b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk)
                sent += len(chunk) + 5
                chunk = b"\x00" * 16384
        except OSError:
            pass
        how, _ = wait_closed(sock)
    log = target.wait_log("TLS handshake failed: hello_too_large")
    record(sent=sent, closed=how, logged="hello_too_large" in log)
