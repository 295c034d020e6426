"""tcp: listeners: the local SIP server's messages go over TLS to a peer, as a TLS client."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.backend import SipBackend
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import request, response_to
from tlstrace.sip.framing import Message, SipFramer

Factory = Callable[..., RelayProcess]


def peer_context(
    pki: Pki, cn: str = "peer.example", *, require_client: bool = True, untrusted: bool = False
) -> ssl.SSLContext:
    files = pki.leaf(cn, names=[cn, "127.0.0.1"], untrusted=untrusted, tag=f"peer-{cn}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert, files.key)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca_file)
    return ctx


@pytest.fixture
def peer(pki: Pki) -> Iterator[SipBackend]:
    with SipBackend(ssl_context=peer_context(pki)) as p:
        yield p


class LocalSipServer:
    """The local SIP server's side: plain TCP into the relay's tcp: listener."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = SipFramer(max_msg_size=1 << 20, pingpong=False, max_chunks=None)
        self.received: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_messages(self, n: int, timeout: float = 10) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            self.received += [e.data for e in self.framer.feed(data) if isinstance(e, Message)]
        assert len(self.received) >= n, f"got {len(self.received)} of {n}"
        out, self.received = self.received[:n], self.received[n:]
        return out

    def close(self) -> None:
        self.sock.close()


def client_domain(pki: Pki, name: str, **extra: Any) -> dict[str, Any]:
    files = pki.leaf(f"{name}.client.example", client=True, tag=f"client-{name}")
    return {
        "name": name,
        "certificate": str(files.cert),
        "private_key": str(files.key),
        "ca_list": str(pki.ca_file),
        **extra,
    }


def tcp_listener(peer_port: int, domain: str = "default", **extra: Any) -> dict[str, Any]:
    return {
        "listen": f"tcp:127.0.0.1:{free_port()}",
        "peer": f"tls:127.0.0.1:{peer_port}",
        "client_domain": domain,
        **extra,
    }


def test_relays_to_the_peer_with_verification_and_client_cert(
    relay_factory: Factory, peer: SipBackend, pki: Pki
) -> None:
    relay = relay_factory(
        {
            "client_domain": [client_domain(pki, "default", server_name="peer.example")],
            "listener": [tcp_listener(peer.port)],
        }
    )
    local = LocalSipServer(relay.port())
    invite = request("INVITE", "out@t", body=b"v=0\r\n")
    local.send(invite)
    assert local.recv_messages(1) == [response_to(invite)]
    assert peer.wait_messages(1) == [invite]
    # the peer sends a request of its own on the same TLS connection
    bye = request("BYE", "out@t", 2)
    peer.send(0, bye)
    assert local.recv_messages(1) == [bye]
    local.close()


def test_peer_hostname_mismatch_is_refused(
    relay_factory: Factory, peer: SipBackend, pki: Pki
) -> None:
    relay = relay_factory(
        {
            "client_domain": [client_domain(pki, "default", server_name="wrong.example")],
            "listener": [tcp_listener(peer.port)],
        }
    )
    local = LocalSipServer(relay.port())
    local.send(request("OPTIONS", "mismatch@t"))
    relay.wait_log("handshake failed: hostname_mismatch")
    assert not any(c.messages for c in peer.conns)
    local.close()


def test_untrusted_peer_is_refused(relay_factory: Factory, pki: Pki) -> None:
    with SipBackend(ssl_context=peer_context(pki, "rogue.example", untrusted=True)) as rogue:
        relay = relay_factory(
            {
                "client_domain": [client_domain(pki, "default", server_name="rogue.example")],
                "listener": [tcp_listener(rogue.port)],
            }
        )
        local = LocalSipServer(relay.port())
        local.send(request("OPTIONS", "rogue@t"))
        relay.wait_log("handshake failed: unknown_ca")
        assert not any(c.messages for c in rogue.conns)
        local.close()


def test_connections_are_reused_per_destination(
    relay_factory: Factory, peer: SipBackend, pki: Pki
) -> None:
    relay = relay_factory(
        {
            "client_domain": [client_domain(pki, "default", server_name="peer.example")],
            "listener": [tcp_listener(peer.port)],
        }
    )
    locals_ = [LocalSipServer(relay.port()) for _ in range(3)]
    for i, local in enumerate(locals_):
        req = request("OPTIONS", f"reuse{i}@t")
        local.send(req)
        assert local.recv_messages(1) == [response_to(req)]
    locals_[0].close()
    again = LocalSipServer(relay.port())
    again.send(request("OPTIONS", "after-close@t"))
    again.recv_messages(1)
    assert len(peer.conns) == 1
    assert len(peer.conns[0].messages) == 4


def test_reuse_check_separates_client_domains(
    relay_factory: Factory, peer: SipBackend, pki: Pki
) -> None:
    def run(check: bool) -> int:
        before = len(peer.conns)
        relay = relay_factory(
            {
                "cert_check_on_conn_reusage": check,
                "client_domain": [
                    client_domain(pki, "one", server_name="peer.example"),
                    client_domain(pki, "two", server_name="peer.example"),
                ],
                "listener": [tcp_listener(peer.port, "one"), tcp_listener(peer.port, "two")],
            }
        )
        for index in (0, 1):
            local = LocalSipServer(relay.port(index))
            local.send(request("OPTIONS", f"dom{index}-{check}@t"))
            local.recv_messages(1)
            local.close()
        relay.stop()
        return len(peer.conns) - before

    assert run(check=False) == 1
    assert run(check=True) == 2


def test_unreachable_peer_is_logged_and_retried(relay_factory: Factory, pki: Pki) -> None:
    port = free_port()
    relay = relay_factory(
        {
            "client_domain": [client_domain(pki, "default", server_name="peer.example")],
            "listener": [tcp_listener(port)],
        }
    )
    local = LocalSipServer(relay.port())
    local.send(request("OPTIONS", "nobody@t"))
    relay.wait_log(f"peer tls:127.0.0.1:{port} unreachable")
    with SipBackend(port=port, ssl_context=peer_context(pki)) as late:
        req = request("OPTIONS", "later@t", 2)
        local.send(req)
        assert local.recv_messages(1) == [response_to(req)]
        assert late.wait_messages(1) == [req]
    local.close()
