"""The asyncio adapters (TlsLeg, PlainLeg) on a mock transport, as uvicorn tests its protocols:
bytes moved, the registry, backpressure between partners, closing. No sockets, no running loop."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from tests.core.harness import Pki
from tlstrace.config import Config
from tlstrace.relay.connection import CloseReason, Connection
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
