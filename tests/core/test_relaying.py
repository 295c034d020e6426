"""Framing, counting, tracing, keep-alives, limits, backpressure, timeouts and closing, through
the relay's TlsCore on an open in-memory connection."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from tests.core.harness import LISTENER, FakeClock, Observer, Pki, Wire, make_ctx
from tests.support.tls_inject import _TLS13_SUITES, ALERT, APPLICATION_DATA, InjectingClient
from tlstrace.relay.connection import CloseReason
from tlstrace.relay.core import keepalive_burst
from tlstrace.tls.session import PeerClosed


def sip(method: str = "OPTIONS", body: bytes = b"", call: str = "c1", extra: str = "") -> bytes:
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\nCall-ID: {call}\r\nCSeq: 1 {method}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def ok(call: str = "c1", extra: str = "") -> bytes:
    return (
        f"SIP/2.0 200 OK\r\nCall-ID: {call}\r\nCSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def open_wire(pki: Pki, clock: FakeClock, observer: Observer | None = None, **cfg: Any) -> Wire:
    ctx = make_ctx(clock, observer, **cfg)
    return Wire(
        ctx,
        pki.server_contexts(pki.domain("a")),
        pki.client_context(version=ssl.TLSVersion.TLSv1_3),
    )


def send(wire: Wire, *records: bytes) -> list[bytes]:
    """The client sends each of `records` as one TLS record, all in one read of the relay."""
    return wire.to_relay(b"".join(wire.client_send(r) for r in records))


def test_messages_pass_whole_and_are_counted(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock)
    a, b = sip("INVITE", b"v=0\r\n"), sip("BYE")
    assert send(wire, a, b) == [a, b]
    assert send(wire, a + b) == [a, b]
    assert wire.core.batch_msgs == 2
    counts = wire.ctx.stats.messages[LISTENER, "from_client"]
    assert counts["INVITE"] == 2 and counts["BYE"] == 2
    assert wire.conn.msgs_in == 4 and wire.conn.bytes_in == 2 * len(a + b)
    wire.relay_send([ok(), b"\r\n"], 1)
    assert wire.client_got == ok() + b"\r\n"
    assert wire.ctx.stats.messages[LISTENER, "to_client"]["2xx"] == 1
    assert wire.conn.msgs_out == 1


def test_a_message_across_records_and_segments(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock)
    msg = sip("MESSAGE", b"x" * 300)
    raw = wire.client_send(msg[:100]) + wire.client_send(msg[100:])
    pieces = [raw[i : i + 37] for i in range(0, len(raw), 37)]
    for piece in pieces[:-1]:
        assert wire.to_relay(piece) == []
        assert wire.core.partial_since  # a record or a message is incomplete
    assert wire.to_relay(pieces[-1]) == [msg]
    assert not wire.core.partial_since


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n", "missing_content_length"),
        (b"HELLO\r\nContent-Length: 0\r\n\r\n", "bad_start_line"),
        (b"BYE sip:x SIP/2.0\r\nl: 0\r\nContent-Length: 0\r\n\r\n", "ambiguous_length"),
        (b"BYE sip:x SIP/2.0\r\nContent-Length: 99999\r\n\r\n", "too_large"),
        (b"BYE sip:x SIP/2.0\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", "bad_header_bytes"),
    ],
)
def test_framing_errors_close_after_what_came_before(
    pki: Pki, clock: FakeClock, data: bytes, kind: str
) -> None:
    wire = open_wire(pki, clock)
    good = sip()
    assert send(wire, good + data, sip("BYE")) == [good]
    assert wire.close_reason is CloseReason.FRAMING_ERROR
    assert wire.ctx.stats.framing_errors[kind] == 1


def test_too_many_records_for_one_message(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock, tls_max_msg_chunks=3)
    msg = sip("MESSAGE", b"y" * 30)
    assert send(wire, msg[:10], msg[10:20]) == []
    assert wire.close_reason is None
    send(wire, msg[20:25])
    assert wire.close_reason is CloseReason.FRAMING_ERROR
    assert wire.ctx.stats.framing_errors["too_many_chunks"] == 1


def test_keepalives(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock)
    assert send(wire, b"\r\n\r\n") == [b"\r\n"]  # a ping: one CRLF goes on
    assert wire.core.batch_msgs == 0
    wire.client_in(wire.from_relay())
    assert wire.client_got == b"\r\n"  # the pong
    assert send(wire, b"\r\n") == [b"\r\n"]
    stats = wire.ctx.stats.keepalives
    assert stats["ping"] == 1 and stats["crlf_relayed"] == 1
    dropping = open_wire(pki, clock, tls_crlf_drop=True)
    assert send(dropping, b"\r\n", sip()) == [sip()]
    assert dropping.ctx.stats.keepalives["crlf_dropped"] == 1


def test_the_keepalive_budget(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock, tls_keepalive_rate=1.0)
    burst = int(keepalive_burst(1.0))
    for _ in range(burst):
        send(wire, b"\r\n")
    assert wire.close_reason is None
    clock.advance(2.0)  # two more allowed
    send(wire, b"\r\n", b"\r\n")
    assert wire.close_reason is None
    send(wire, b"\r\n")
    assert wire.close_reason is CloseReason.KEEPALIVE_FLOOD


def test_records_without_sip(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock, tls_max_non_sip_records=3, keys=True)
    contexts = pki.server_contexts(pki.domain("a"))
    assert ctx.keylog is not None
    for ident in contexts.identities:
        ctx.keylog.attach(ident.context)
    wire = Wire(ctx, contexts, pki.client_context(version=ssl.TLSVersion.TLSv1_3))
    forge = InjectingClient.__new__(InjectingClient)
    forge.version = "TLSv1.3"
    assert wire.conn.cipher is not None
    forge.algorithm, forge.key_size, forge.aead = _TLS13_SUITES[wire.conn.cipher]
    secret = next(ln.split()[2] for ln in wire.conn.keylog if ln.startswith("CLIENT_TRAFFIC"))
    forge._traffic(bytes.fromhex(secret))
    # a message, then user_canceled warning alerts (OpenSSL takes them in silence)
    assert wire.to_relay(forge.record(APPLICATION_DATA, sip())) == [sip()]
    alert = forge.record(ALERT, b"\x01\x5a") + forge.record(ALERT, b"\x01\x5a")
    assert wire.to_relay(alert) == []
    assert wire.close_reason is None and wire.core.non_sip_records == 2
    wire.to_relay(forge.record(ALERT, b"\x01\x5a"))
    assert wire.close_reason is CloseReason.NON_SIP_RECORDS


def test_tracing_gets_one_batch_per_read_and_write(pki: Pki, clock: FakeClock) -> None:
    observer = Observer(trace=True)
    wire = open_wire(pki, clock, observer)
    assert wire.conn.traced and observer.tracer is not None
    a, b = sip(), sip("BYE")
    send(wire, a, b)
    clock.advance(2.5)
    wire.relay_send([ok(), ok("c2")], 2)
    assert observer.tracer.batches == [([a, b], True), ([ok(), ok("c2")], False)]
    # stamped with the context's wall clock (injected: the core reads no clock of its own)
    start = clock() - 2.5
    assert observer.tracer.timestamps == [clock.EPOCH + start, clock.EPOCH + start + 2.5]


def test_messages_for_the_client_wait_for_its_handshake(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock)
    wire = Wire(ctx, pki.server_contexts(pki.domain("a")), pki.client_context(), start_client=False)
    wire.relay_send([ok()], 1)
    assert wire.core.outq_msgs == 1 and not wire.core.backlog_out()
    wire.client.start(clock())
    wire.pump()
    assert wire.client_got == ok() and wire.core.outq_msgs == 0


def test_the_partner_closing_first_waits_for_the_handshake(pki: Pki, clock: FakeClock) -> None:
    ctx = make_ctx(clock)
    wire = Wire(ctx, pki.server_contexts(pki.domain("a")), pki.client_context(), start_client=False)
    wire.relay_send([ok()], 1)
    assert not wire.core.partner_closed(CloseReason.BACKEND_GONE, "gone")
    wire.client.start(clock())
    wire.pump()
    assert wire.client_got == ok()
    assert wire.close_reason is CloseReason.BACKEND_GONE


def test_what_a_shutdown_waits_for(pki: Pki, clock: FakeClock) -> None:
    """Drained: nothing read waits in the core (at shutdown a connection closes once drained)."""
    wire = open_wire(pki, clock)
    assert wire.core.drained()
    msg = sip("MESSAGE", b"x" * 300)
    send(wire, msg[:100])
    assert not wire.core.drained()  # half a message
    assert send(wire, msg[100:]) == [msg] and wire.core.drained()
    wire.core.partner_pending = True  # its backend is connecting
    assert not wire.core.drained()
    wire.core.partner_pending = False
    wire.core.hold([msg], 1)
    assert not wire.core.drained()
    wire.core.take_pending()
    assert wire.core.drained()
    waiting = Wire(
        make_ctx(clock),
        pki.server_contexts(pki.domain("a")),
        pki.client_context(),
        start_client=False,
    )
    waiting.relay_send([ok()], 1)  # queued for the handshake
    assert not waiting.core.drained()
    waiting.client.start(clock())
    waiting.pump()
    assert waiting.client_got == ok() and waiting.core.drained()


def test_queues_are_bounded(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock, conn_buffer_limit=4096)
    big = sip("MESSAGE", b"z" * 1000)
    wire.core.hold([big] * 3, 3)
    assert not wire.core.backlog_in()
    wire.core.hold([big], 1)
    assert wire.core.backlog_in()
    assert wire.core.take_pending() == ([big] * 4, 4) and not wire.core.backlog_in()


def test_close_paths(pki: Pki, clock: FakeClock, observer: Observer) -> None:
    wire = open_wire(pki, clock, observer)
    a = sip()
    # the client's last message and its close_notify in one read
    assert wire.client.obj is not None
    wire.client.obj.write(a)
    wire.client.close()
    assert wire.to_relay(wire.client.outgoing.read()) == [a]
    assert wire.close_reason is CloseReason.EOF
    # the relay ends a connection: close_notify to the client, counted once
    other = open_wire(pki, clock, observer)
    other.core.close(CloseReason.CLOSED_BY_API, "", flush=True)
    other.client_in(other.from_relay())
    assert any(isinstance(e, PeerClosed) and not e.error for e in other.client_events)
    other.core.close(CloseReason.CLOSED_BY_API, "", flush=True)
    assert other.ctx.stats.closed[LISTENER, "closed_by_api"] == 1
    assert observer.closes == [CloseReason.CLOSED_BY_API]
    assert other.conn.state == "closed" and other.conn.close_reason is CloseReason.CLOSED_BY_API
    # aborted: nothing more is written
    third = open_wire(pki, clock)
    third.relay_send([ok()], 1)
    third.core.hold([a], 1)
    third.core.close(CloseReason.SEND_TIMEOUT, "", flush=False)
    assert third.from_relay() == b""
    assert third.ctx.stats.dropped_messages["send_timeout"] == 1
    assert third.ctx.stats.bytes[LISTENER, "to_tls"] == len(ok())


def test_a_read_error(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock)
    record = bytearray(wire.client_send(sip()))
    record[-1] ^= 1  # the tag no longer matches
    assert wire.to_relay(bytes(record)) == []
    assert wire.close_reason is CloseReason.READ_ERROR


# -- timers ------------------------------------------------------------------------------------


def test_an_incomplete_message_times_out(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock, tcp_max_msg_time=4.0)
    send(wire, sip()[:20])
    due = wire.core.next_deadline()
    assert due == clock() + 4.0
    wire.core.handle_timer(due)
    assert wire.close_reason is None
    wire.core.handle_timer(due + 0.01)
    assert wire.close_reason is CloseReason.MESSAGE_TIMEOUT
    assert wire.ctx.stats.framing_errors["message_timeout"] == 1


def test_a_paused_reader_is_not_timed_out_for_its_partial_message(
    pki: Pki, clock: FakeClock
) -> None:
    wire = open_wire(pki, clock, tcp_max_msg_time=4.0)
    send(wire, sip()[:20])
    wire.core.reading_changed(True, clock())
    wire.core.handle_timer(clock.advance(10))
    assert wire.close_reason is None
    wire.core.reading_changed(False, clock())  # the wait starts again now
    wire.core.handle_timer(clock.advance(3))
    assert wire.close_reason is None
    wire.core.handle_timer(clock.advance(2))
    assert wire.close_reason is CloseReason.MESSAGE_TIMEOUT


def test_a_client_that_does_not_read(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock, tls_send_timeout=3000)
    wire.core.writing_paused(clock())
    wire.core.handle_timer(clock.advance(2.9))
    assert wire.close_reason is None
    wire.core.writing_resumed()
    wire.core.writing_paused(clock())
    wire.core.handle_timer(clock.advance(3.1))
    assert wire.core.close_request == (
        CloseReason.SEND_TIMEOUT,
        "peer left data unread for over 3000 ms",
        True,
    )


def test_idle_connections_close_unless_registered(pki: Pki, clock: FakeClock) -> None:
    wire = open_wire(pki, clock, tcp_connection_lifetime=60.0, registration_margin=30.0)
    send(wire, sip())
    assert wire.core.next_deadline() == clock() + 60.0
    wire.core.handle_timer(clock.advance(61))
    assert wire.close_reason is CloseReason.IDLE_TIMEOUT

    held = open_wire(pki, clock, tcp_connection_lifetime=60.0, registration_margin=30.0)
    contact = "Contact: <sip:p@192.0.2.1:5061;transport=tls>\r\nTo: <sip:p@example.com>\r\n"
    send(held, sip("REGISTER", call="r1", extra=contact + "Expires: 600\r\n"))
    held.relay_send([ok("r1", contact.replace(">\r\nTo", ">;expires=600\r\nTo"))], 1)
    assert held.conn.registered_until is not None
    held.core.handle_timer(clock.advance(61))
    assert held.close_reason is None
    due = held.core.next_deadline()
    assert due is not None and due > clock()
    held.core.handle_timer(clock.advance(600))
    assert held.close_reason is CloseReason.IDLE_TIMEOUT
