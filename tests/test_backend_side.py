"""The backend side: PROXY protocol v2, IPv6, a backend over TLS, an unreachable backend,
backpressure from a backend that does not read, and the connection limit."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable

import pytest

from tests.support.backend import SipBackend
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request, response_to

Factory = Callable[..., RelayProcess]


def test_proxy_protocol_v2_carries_the_client_address(relay_factory: Factory) -> None:
    with SipBackend(expect_proxy=True) as backend:
        relay = relay_factory(
            {"listener": [RelayProcess.tls_listener(backend.port, proxy_protocol=True)]}
        )
        with TlsClient(relay.port()) as client:
            client.send(request())
            assert client.recv_messages(1) == [response_to(request())]
            conn = backend.wait_conns(1)[0]
            assert conn.proxy == (("127.0.0.1", client.local_port), ("127.0.0.1", relay.port()))
            assert conn.messages == [request()]


def test_ipv6_listener_and_backend(relay_factory: Factory) -> None:
    with SipBackend("::1") as backend:
        port = free_port(socket.AF_INET6)
        relay = relay_factory(
            {"listener": [{"listen": f"tls:[::1]:{port}", "backend": f"tcp:[::1]:{backend.port}"}]}
        )
        with TlsClient(port, "::1") as client:
            client.send(request())
            client.recv_messages(1)
        assert backend.conns[0].peer[0] == "::1"
        assert relay.proc.poll() is None


def test_backend_over_tls(relay_factory: Factory, pki: Pki) -> None:
    files = pki.leaf("backend.example", names=["backend.example"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert, files.key)
    with SipBackend(ssl_context=ctx) as backend:
        relay = relay_factory(
            {
                "client_domain": [
                    {
                        "name": "default",
                        "ca_list": str(pki.ca_file),
                        "server_name": "backend.example",
                    }
                ],
                "listener": [
                    {
                        "listen": f"tls:127.0.0.1:{free_port()}",
                        "backend": f"tls:127.0.0.1:{backend.port}",
                    }
                ],
            }
        )
        with TlsClient(relay.port()) as client:
            reqs = [request("MESSAGE", f"tb{i}@t", i + 1, b"z" * 500) for i in range(20)]
            client.send(b"".join(reqs))
            assert client.recv_messages(20) == [response_to(r) for r in reqs]
        assert backend.wait_messages(20) == reqs


def test_unreachable_backend_closes_the_client_and_is_logged(relay_factory: Factory) -> None:
    dead = free_port()
    relay = relay_factory(
        {
            "listener": [
                {"listen": f"tls:127.0.0.1:{free_port()}", "backend": f"tcp:127.0.0.1:{dead}"}
            ]
        }
    )
    with TlsClient(relay.port()) as client:
        client.send(request())
        assert client.wait_closed()
    relay.wait_log(f"backend tcp:127.0.0.1:{dead} unreachable")
    relay.wait_log("closed: Backend unreachable")


def test_backend_that_never_reads_is_bounded(relay_factory: Factory) -> None:
    """The relay buffers at most about conn_buffer_limit, then stops reading from the client;
    past tls_send_timeout it gives up on that connection. Others carry on."""
    with SipBackend() as backend:
        relay = relay_factory(
            {
                "conn_buffer_limit": 65536,
                "tls_send_timeout": 1500,
                "listener": [RelayProcess.tls_listener(backend.port)],
            }
        )
        good = TlsClient(relay.port())
        good.send(request(call_id="good@t"))
        good.recv_messages(1)
        backend.pause_all()
        stuck = TlsClient(relay.port(), timeout=2)
        big = request("MESSAGE", "big@t", body=b"b" * 60000)
        sent = 0
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                stuck.send(big)
                sent += 1
        except (TimeoutError, OSError, ssl.SSLError):
            pass  # the relay stopped reading: our socket buffers filled, or it closed us
        # far less than everything we tried to push was accepted into the relay
        assert sent < 300
        assert stuck.wait_closed(timeout=15)
        relay.wait_log("closed: Send timeout")


def test_connection_limit(relay_factory: Factory) -> None:
    with SipBackend() as backend:
        relay = relay_factory(
            {"tcp_max_connections": 3, "listener": [RelayProcess.tls_listener(backend.port)]}
        )
        held = [TlsClient(relay.port()) for _ in range(3)]
        for i, c in enumerate(held):
            c.send(request(call_id=f"held{i}@t"))
            c.recv_messages(1)
        refused = socket.create_connection(("127.0.0.1", relay.port()), timeout=5)
        refused.sendall(b"\x16\x03\x01\x00\x05hello")
        with contextlib.suppress(ConnectionResetError):
            assert refused.recv(10) == b""
        relay.wait_log("tcp_max_connections (3) reached")
        held[0].close_notify()
        time.sleep(0.3)
        with TlsClient(relay.port()) as again:
            again.send(request(call_id="again@t"))
            again.recv_messages(1)
        for c in held[1:]:
            c.send(request(call_id="still@t", cseq=2))
            c.recv_messages(1)
            c.close()


def refused_by(relay: RelayProcess) -> bool:
    """Whether the relay resets a new connection at once (tcp_max_connections reached)."""
    with socket.create_connection(("127.0.0.1", relay.port()), timeout=5) as s:
        s.settimeout(1.0)
        try:
            s.sendall(b"\x16\x03\x01\x00\x05hello")
            return s.recv(10) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False  # accepted: the relay waits for the rest of the hello


def test_a_client_gone_while_its_backend_connects_keeps_its_place(
    relay_factory: Factory,
) -> None:
    """A client that sends and leaves while its backend connects still counts against
    tcp_max_connections until the connect ends: what it sent is held until then, and clients
    that send and leave must not make the relay hold buffers beyond the limit."""
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        port = stuck.getsockname()[1]
        # fill the accept queue that is never read: connects to it now hang (SYNs dropped)
        filler = socket.create_connection(("127.0.0.1", port), timeout=2)
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                filler.close()
                pytest.skip("this kernel completes connects to a full accept queue")
        relay = relay_factory(
            {
                "tcp_max_connections": 1,
                "tls_handshake_timeout": 4000,
                "backend_probe_interval": 0,
                "listener": [RelayProcess.tls_listener(port)],
            }
        )
        # (the start-up check's probe connection may still hold the one place for a moment)
        deadline = time.monotonic() + 10
        while True:
            try:
                leaving = TlsClient(relay.port())
                break
            except ConnectionResetError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with leaving:
            leaving.send(request("MESSAGE", "left@t", body=b"m" * 1000))
            leaving.close_notify()
            assert leaving.wait_closed()
        time.sleep(0.3)
        assert refused_by(relay)  # its place is still taken
        relay.wait_log(f"backend tcp:127.0.0.1:{port} unreachable", timeout=15)
        time.sleep(0.3)
        assert not refused_by(relay)  # the connect ended: the place is free again
        filler.close()


def test_client_closing_while_the_tls_backend_connects_loses_nothing(
    relay_factory: Factory, pki: Pki
) -> None:
    files = pki.leaf("backend2.example", names=["backend2.example"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert, files.key)
    with SipBackend(ssl_context=ctx, answer=False) as backend:
        relay = relay_factory(
            {
                "client_domain": [
                    {
                        "name": "default",
                        "ca_list": str(pki.ca_file),
                        "server_name": "backend2.example",
                    }
                ],
                "listener": [
                    {
                        "listen": f"tls:127.0.0.1:{free_port()}",
                        "backend": f"tls:127.0.0.1:{backend.port}",
                    }
                ],
            }
        )
        client = TlsClient(relay.port())
        msgs = [request("MESSAGE", f"early{i}@t", i + 1, b"e" * 300) for i in range(30)]
        client.send(b"".join(msgs))
        client.close_notify()  # before the relay's TLS connection to the backend is up
        assert backend.wait_messages(30) == msgs
        assert backend.wait_closed(0)


def test_idle_connection_to_a_tls_backend_is_not_a_partial_message(
    relay_factory: Factory, pki: Pki
) -> None:
    """A TLS 1.3 backend's session tickets are whole records without application data: they
    must not arm the partial-message timeout of an idle connection."""
    files = pki.leaf("backend3.example", names=["backend3.example"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert, files.key)
    with SipBackend(ssl_context=ctx) as backend:
        relay = relay_factory(
            {
                "tcp_max_msg_time": 0.5,
                "client_domain": [
                    {
                        "name": "default",
                        "ca_list": str(pki.ca_file),
                        "server_name": "backend3.example",
                    }
                ],
                "listener": [
                    {
                        "listen": f"tls:127.0.0.1:{free_port()}",
                        "backend": f"tls:127.0.0.1:{backend.port}",
                    }
                ],
            }
        )
        with TlsClient(relay.port()) as client:
            client.send(request(call_id="idle1@t"))
            client.recv_messages(1)
            time.sleep(2.0)  # four times tcp_max_msg_time, idle
            client.send(request(call_id="idle2@t", cseq=2))
            client.recv_messages(1)
        assert "Timeout waiting for a complete message" not in relay.log
