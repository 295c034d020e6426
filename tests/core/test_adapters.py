"""The asyncio adapters (TlsLeg, PlainLeg) on a mock transport, as uvicorn tests its protocols:
bytes moved, the registry, backpressure between partners, closing. No sockets, no running loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from tests.core.harness import Pki
from tlstrace.config import Config
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.hooks import NullObserver
from tlstrace.relay.leg import unread_bytes
from tlstrace.relay.plain_leg import PlainLeg
from tlstrace.relay.runtime import Relay
from tlstrace.relay.tls_leg import TlsLeg

OPTIONS = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n"


class MockTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def take(self) -> bytes:
        out = b"".join(self.written)
        self.written.clear()
        return out

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 123

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5061) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def relay() -> Iterator[Relay]:
    loop = asyncio.new_event_loop()
    yield Relay(Config(), loop, source="test")
    loop.close()


def tls_pair(pki: Pki, relay: Relay) -> tuple[TlsLeg, MockTransport, PlainLeg, MockTransport, Any]:
    """A server TlsLeg with a PlainLeg partner, handshaken with an in-memory client."""
    contexts = pki.server_contexts(pki.domain("a"))
    conn = Connection("inbound", ("192.0.2.1", 4000), ("127.0.0.1", 5061), "tls:x")
    leg = TlsLeg(relay, conn, contexts.initial, server_side=True)
    t = MockTransport()
    leg.connection_made(t)
    backend = PlainLeg(relay, leg, name="backend")
    bt = MockTransport()
    backend.connection_made(bt)
    leg.partner = backend
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = pki.client_context(version=ssl.TLSVersion.TLSv1_3).wrap_bio(
        incoming, outgoing, server_hostname="a.example.com"
    )
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            leg.data_received(outgoing.read())
            incoming.write(t.take())
    leg.data_received(outgoing.read())
    return leg, t, backend, bt, (client, incoming, outgoing)


def test_messages_move_both_ways(pki: Pki, relay: Relay) -> None:
    leg, t, backend, bt, (client, incoming, outgoing) = tls_pair(pki, relay)
    assert relay.connections == {leg.conn.id: leg.conn} and leg in relay.legs
    assert leg.handshake_timer is None  # cancelled at the handshake's end
    client.write(OPTIONS)
    leg.data_received(outgoing.read())
    assert bt.take() == OPTIONS
    backend.data_received(OK)
    incoming.write(t.take())
    assert client.read(65536) == OK
    client.write(b"\r\n\r\n")  # a ping: the pong comes back, one CRLF goes on
    leg.data_received(outgoing.read())
    assert bt.take() == b"\r\n"
    incoming.write(t.take())
    assert client.read(65536) == b"\r\n"


def test_backpressure_between_partners(pki: Pki, relay: Relay) -> None:
    leg, t, backend, bt, _ = tls_pair(pki, relay)
    backend.pause_writing()  # the backend does not read
    assert not t.reading and leg.core.reading_paused
    backend.resume_writing()
    assert t.reading and not leg.core.reading_paused
    leg.pause_writing()  # the client does not read
    assert not bt.reading
    leg.check_timeouts(relay.ctx.clock() + 11)  # tls_send_timeout: 10 s
    assert leg.closed and t.aborted and leg.conn.close_reason is CloseReason.SEND_TIMEOUT
    assert relay.stats.bytes_dropped["send_timeout"] == 123
    assert backend.closed and bt.closed  # the partner ends after flushing
    assert relay.connections == {}


def test_shutdown_waits_for_what_is_on_its_way(pki: Pki, relay: Relay) -> None:
    leg, _, backend, bt, (client, _, outgoing) = tls_pair(pki, relay)
    assert leg.settled() and backend.settled()  # (a mock transport has no socket)
    client.write(OPTIONS[:30])
    leg.data_received(outgoing.read())
    assert not leg.drained() and not leg.settled() and not backend.settled()
    client.write(OPTIONS[30:])
    leg.data_received(outgoing.read())
    assert bt.take() == OPTIONS and leg.settled() and backend.settled()
    leg.close(CloseReason.SHUTDOWN)
    assert backend.closed and leg.drained() and backend.drained()  # closed: nothing to wait for


def test_unread_bytes_are_the_sockets() -> None:
    class SocketTransport(asyncio.Transport):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__()
            self.sock = sock

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.sock if name == "socket" else default

    a, b = socket.socketpair()
    with a, b:
        t = SocketTransport(b)
        assert unread_bytes(t) == 0
        a.sendall(b"x" * 1000)
        assert unread_bytes(t) == 1000
        b.recv(600)
        assert unread_bytes(t) == 400
    assert unread_bytes(t) == 0  # closed: nothing more to read


def test_closing_sends_close_notify(pki: Pki, relay: Relay) -> None:
    leg, t, _backend, bt, (client, incoming, _) = tls_pair(pki, relay)
    assert relay.close_connection(leg.conn.id, CloseReason.CLOSED_BY_API)
    incoming.write(t.take())
    assert client.read(65536) == b""  # close_notify
    assert t.closed and bt.closed and leg.conn.state == "closed"
    assert relay.stats.closed["tls:x", "closed_by_api"] == 1


def test_the_backend_closing_closes_the_client(pki: Pki, relay: Relay) -> None:
    leg, _t, backend, _bt, _ = tls_pair(pki, relay)
    backend.connection_lost(None)
    assert leg.closed and leg.conn.close_reason is CloseReason.BACKEND_GONE
    leg.connection_lost(None)
    assert leg not in relay.legs and backend not in relay.legs


def test_a_closed_leg_is_freed_without_the_garbage_collector(pki: Pki, relay: Relay) -> None:
    """The core keeps no reference to its leg once closed: no cycle is left holding the
    session, OpenSSL's object and the buffers of every ended connection until a GC pass."""
    leg, t, backend, bt, _ = tls_pair(pki, relay)
    # (neither the leg nor OpenSSL's object take weak references: count OpenSSL's objects)
    sslobj_type = type(leg.core.session.sslobj)
    before = sum(1 for o in gc.get_objects() if type(o) is sslobj_type)
    gc.disable()
    try:
        leg.close(CloseReason.EOF)
        leg.connection_lost(None)
        backend.connection_lost(None)
        del leg, t, backend, bt
        assert sum(1 for o in gc.get_objects() if type(o) is sslobj_type) == before - 1
    finally:
        gc.enable()


def test_a_client_handshake_that_cannot_begin_fails_at_once(relay: Relay) -> None:
    """No protocol version in common: the failure is acted on when the transport comes up,
    not by the next timeout sweep."""
    bad = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bad.check_hostname, bad.verify_mode = False, ssl.CERT_NONE
    bad.minimum_version, bad.maximum_version = ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2
    conn = Connection("outbound", ("192.0.2.9", 5061), ("127.0.0.1", 40000), "tls:x")
    leg = TlsLeg(relay, conn, bad, server_side=False, server_hostname="peer.example")
    leg.connection_made(MockTransport())
    assert leg.closed and conn.close_reason is CloseReason.HANDSHAKE_FAILED
    assert conn.id not in relay.connections


def test_a_record_begun_in_the_handshakes_last_read_starts_the_partial_clock(
    pki: Pki, relay: Relay
) -> None:
    """The client's Finished and the first bytes of its next record in one read: the partial
    record is timed (tcp_max_msg_time) from then, not left to the idle timeout."""
    contexts = pki.server_contexts(pki.domain("a"))
    conn = Connection("inbound", ("192.0.2.1", 4000), ("127.0.0.1", 5061), "tls:x")
    leg = TlsLeg(relay, conn, contexts.initial, server_side=True)
    t = MockTransport()
    leg.connection_made(t)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = pki.client_context(version=ssl.TLSVersion.TLSv1_3).wrap_bio(
        incoming, outgoing, server_hostname="a.example.com"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    leg.data_received(outgoing.read())
    incoming.write(t.take())
    client.do_handshake()
    finished = outgoing.read()
    client.write(OPTIONS)
    record = outgoing.read()
    leg.data_received(finished + record[:3])
    assert conn.state == "open" and leg.core.partial_since
    leg.check_timeouts(relay.ctx.clock() + relay.config.tcp_max_msg_time + 1)
    assert leg.closed and conn.close_reason is CloseReason.MESSAGE_TIMEOUT


class RaisingObserver(NullObserver):
    def closed(self, conn: Connection, reason: CloseReason, traced: Any) -> None:
        raise RuntimeError("a broken observer")


def test_an_observer_that_raises_does_not_keep_a_connection_open(
    pki: Pki, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    leg, t, _backend, bt, _ = tls_pair(pki, relay)
    relay.observer = RaisingObserver()
    leg.close(CloseReason.CLOSED_BY_API)
    assert t.closed and bt.closed and relay.connections == {}
    assert "tracing its close failed" in caplog.text
