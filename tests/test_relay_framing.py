"""Each framing rule, through the running relay: the offender is closed with a logged reason,
and a well-behaved client on the same relay carries on."""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable

import pytest

from tests.support.backend import SipBackend
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]


def start(relay_factory: Factory, backend: SipBackend, **settings: object) -> RelayProcess:
    return relay_factory({**settings, "listener": [RelayProcess.tls_listener(backend.port)]})


def check_bystander(relay: RelayProcess, client: TlsClient, n: int) -> None:
    req = request("OPTIONS", f"bystander-{n}@t", n)
    client.send(req)
    assert client.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")


def test_crlf_ping_gets_a_pong_and_the_backend_a_crlf(
    relay: RelayProcess, backend: SipBackend
) -> None:
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
        client.send(b"\r\n\r\n")
        assert client.recv_keepalive() == b"\r\n"
    backend.wait_messages(1)
    deadline = time.monotonic() + 5
    while not backend.conns[0].keepalives and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.conns[0].keepalives == [b"\r\n"]


def test_pingpong_off_passes_the_ping_to_the_backend(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = start(relay_factory, backend, tls_crlf_pingpong=False)
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
        client.send(b"\r\n\r\n")
        deadline = time.monotonic() + 5
        while not backend.conns[0].keepalives and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.conns[0].keepalives == [b"\r\n\r\n"]
        backend.send(0, b"\r\n")  # the backend's own pong comes back through
        assert client.recv_keepalive() == b"\r\n"


@pytest.mark.parametrize("drop", [False, True])
def test_lone_crlf_relayed_or_dropped(
    relay_factory: Factory, backend: SipBackend, drop: bool
) -> None:
    relay = start(relay_factory, backend, tls_crlf_drop=drop)
    with TlsClient(relay.port()) as client:
        client.send(request(call_id="a"))
        client.recv_messages(1)
        client.send(b"\r\n")
        client.send(request(call_id="b", cseq=2))
        client.recv_messages(1)
    msgs = backend.wait_messages(2)
    assert msgs == [request(call_id="a"), request(call_id="b", cseq=2)]
    assert backend.conns[0].keepalives == ([] if drop else [b"\r\n"])


BAD_MESSAGES = {
    "missing_content_length": b"OPTIONS sip:x SIP/2.0\r\nCall-ID: x\r\n\r\n",
    "bad_content_length": b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n",
    "too_large": request("MESSAGE", body=b"x" * 70000)[:60000],
    "bad_header_bytes": b"OPTIONS sip:x SIP/2.0\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bad_start_line": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "ambiguous_length": request("OPTIONS", call_id="outer").replace(
        b"Content-Length: 0", b"Content_Length: 0\r\nContent-Length: 10"
    )
    + b"0123456789",
}


@pytest.mark.parametrize("kind", sorted(BAD_MESSAGES))
def test_framing_error_closes_only_the_offender(
    relay: RelayProcess, backend: SipBackend, kind: str
) -> None:
    with TlsClient(relay.port()) as good, TlsClient(relay.port()) as bad:
        check_bystander(relay, good, 1)
        bad.send(request(call_id="before"))
        bad.recv_messages(1)
        with contextlib.suppress(OSError):  # the relay may close while the rest is sent
            bad.send(BAD_MESSAGES[kind])
        assert bad.wait_closed()
        relay.wait_log(f"closed: Framing error ({kind}")
        check_bystander(relay, good, 2)


def test_too_many_chunks(relay_factory: Factory, backend: SipBackend) -> None:
    relay = start(relay_factory, backend, tls_max_msg_chunks=4)
    msg = request("INVITE", body=b"v=0\r\n" * 100)
    with TlsClient(relay.port()) as good, TlsClient(relay.port()) as bad:
        check_bystander(relay, good, 1)
        step = len(msg) // 6 + 1
        # the relay closes after the fifth record: sending the sixth may already fail
        with contextlib.suppress(OSError, ssl.SSLError):
            bad.send_records([msg[i : i + step] for i in range(0, len(msg), step)])
        assert bad.wait_closed()
        relay.wait_log("closed: Framing error (too_many_chunks")
        check_bystander(relay, good, 2)
    assert not any(msg in c.messages for c in backend.conns)


def test_partial_message_times_out(relay_factory: Factory, backend: SipBackend) -> None:
    relay = start(relay_factory, backend, tcp_max_msg_time=0.5)
    with TlsClient(relay.port()) as client:
        client.send(request()[:40])
        assert client.wait_closed(timeout=10)
    relay.wait_log("closed: Timeout waiting for a complete message")


def test_idle_connection_times_out(relay_factory: Factory, backend: SipBackend) -> None:
    relay = start(relay_factory, backend, tcp_connection_lifetime=1.0)
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
        assert client.wait_closed(timeout=10)
    relay.wait_log("closed: Timeout on no traffic")
    assert backend.wait_closed(0)


def test_keepalives_keep_a_connection_alive(relay_factory: Factory, backend: SipBackend) -> None:
    relay = start(relay_factory, backend, tcp_connection_lifetime=1.0)
    with TlsClient(relay.port()) as client:
        for _ in range(8):
            client.send(b"\r\n\r\n")
            assert client.recv_keepalive() == b"\r\n"
            time.sleep(0.3)
        check_bystander(relay, client, 1)
