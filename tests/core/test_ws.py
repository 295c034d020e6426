"""The WebSocket core in memory: a wsproto client (or hand-made bytes) wired to a WsCore over a
TLS session (wss:) or a plain one (ws:), with a fake clock. Every refusal of the framer, the
Content-Length rule, keep-alives, the close handshake, and random splits of the byte stream."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)

from tests.core.harness import LISTENER, FakeClock, Observer, Pki, ServerIdentityOf, make_ctx
from tests.support.ws import frame, upgrade_request
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.context import RelayContext
from tlstrace.relay.ws_core import PlainSession, WsCore
from tlstrace.tls.session import TlsSession
from tlstrace.ws.framer import WsFramer, WsRefusal

WS_LISTENER = "ws:127.0.0.1:8080"

OPTIONS = (
    "OPTIONS sip:alice@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK56sdasks\r\n"
    "From: <sip:bob@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n"
    "Call-ID: ws-1\r\nCSeq: 1 OPTIONS\r\n\r\n"
)


def with_length(msg: str) -> bytes:
    head, _, body = msg.encode().partition(b"\r\n\r\n")
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


class WsWire:
    """A wsproto client and the relay's WsCore joined through memory (TLS in between for wss)."""

    def __init__(
        self,
        ctx: RelayContext,
        *,
        pki: Pki | None = None,
        upgrade: bool = True,
        headers: list[tuple[bytes, bytes]] | None = None,
        protocols: tuple[str, ...] = ("sip",),
    ) -> None:
        self.ctx = ctx
        listener = LISTENER if pki is not None else WS_LISTENER
        self.conn = Connection("inbound", ("192.0.2.1", 40000), ("127.0.0.1", 8443), listener)
        self.conn.transport = "wss" if pki is not None else "ws"
        self.client_tls: TlsSession | None = None
        if pki is not None:
            contexts = pki.server_contexts(pki.domain("a"))
            session = TlsSession(
                contexts.initial,
                server_side=True,
                handshake_timeout_ms=5000,
                now=ctx.clock(),
            )
            identity = ServerIdentityOf(contexts)
            self.client_tls = TlsSession(
                pki.client_context(),
                server_side=False,
                handshake_timeout_ms=5000,
                now=ctx.clock(),
                server_hostname="a.example.com",
            )
        else:
            session = PlainSession(ctx.clock())
            identity = ServerIdentityOf(_NoContexts())  # type: ignore[arg-type]
        self.core = WsCore(ctx, self.conn, session, identity)
        session.start(ctx.clock())
        self.forwarded: list[bytes] = []
        self.opened = 0
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []
        #: what the client got, as bytes (a hand-made upgrade has no wsproto client)
        self.raw = b""
        self.use_ws = upgrade
        if self.client_tls is not None:
            self.client_tls.start(ctx.clock())
            self.pump()
            assert self.conn.state == "open"
        if upgrade:
            self.send_raw(
                self.ws.send(
                    Request(
                        host="sip.example.com",
                        target="/ws",
                        subprotocols=list(protocols),
                        extra_headers=headers
                        if headers is not None
                        else [(b"Origin", b"https://phone.example.com"), (b"User-Agent", b"t/1")],
                    )
                )
            )

    # -- moving bytes ----------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Plain WebSocket bytes from the client (encrypted on the way for wss)."""
        if self.client_tls is not None:
            self.to_relay(self.client_tls.send(data))
        else:
            self.to_relay(data)

    def to_relay(self, wire: bytes) -> None:
        out = self.core.receive(wire, self.ctx.clock())
        self.opened += len(self.core.pop_events())
        self.forwarded += out
        self.client_in(self.core.data_to_send())

    def client_in(self, wire: bytes) -> None:
        if not wire:
            return
        if self.client_tls is not None:
            if self.client_tls.state == 2:
                return
            data = b"".join(self.client_tls.receive(wire, self.ctx.clock()))
            self.client_tls.pop_events()
        else:
            data = wire
        self.raw += data
        if data and self.use_ws:
            self.ws.receive_data(data)
            self.events += list(self.ws.events())

    def pump(self) -> None:
        assert self.client_tls is not None
        for _ in range(20):
            c = self.client_tls.data_to_send()
            s = self.core.data_to_send()
            if not c and not s:
                return
            if c:
                self.to_relay(c)
            if s:
                self.client_in(s)

    def relay_send(self, chunks: list[bytes]) -> None:
        self.client_in(self.core.send(chunks, len(chunks), self.ctx.clock()))

    # -- what the client saw ---------------------------------------------------------------------

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def messages(self) -> list[bytes]:
        return [
            e.data.encode() if isinstance(e, TextMessage) else bytes(e.data)
            for e in self.events
            if isinstance(e, TextMessage | BytesMessage)
        ]

    @property
    def close_code(self) -> int | None:
        closes = self.of(CloseConnection)
        return int(closes[0].code) if closes else None

    @property
    def reason(self) -> CloseReason | None:
        req = self.core.close_request
        return req[0] if req is not None else None


class _NoContexts:
    def identity_of(self, context: object) -> None:
        return None


def refused(ctx: RelayContext, listener: str, kind: WsRefusal) -> int:
    return ctx.stats.ws_refused[listener, kind.value]


@pytest.fixture
def ctx(clock: FakeClock, observer: Observer) -> RelayContext:
    return make_ctx(clock, observer, listener=[{"listen": WS_LISTENER}])


# -- the Upgrade -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_upgrade_relays_messages_both_ways(
    ctx: RelayContext, observer: Observer, pki: Pki, tls: bool
) -> None:
    w = WsWire(ctx, pki=pki if tls else None)
    accepted = w.of(AcceptConnection)
    assert accepted and accepted[0].subprotocol == "sip"
    assert w.opened == 1 and observer.done == [w.conn]
    assert (w.conn.ws_path, w.conn.ws_origin, w.conn.user_agent) == (
        "/ws",
        "https://phone.example.com",
        "t/1",
    )
    if tls:
        assert w.conn.tls_version is not None
    w.send_raw(w.ws.send(TextMessage(data=OPTIONS)))
    # the only change: a Content-Length, added because the client left it out
    assert w.forwarded == [with_length(OPTIONS)]
    assert w.core.batch_msgs == 1
    answer = b"SIP/2.0 200 OK\r\nCall-ID: ws-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    w.relay_send([answer, b"\r\n"])
    assert w.messages == [answer]  # one text frame, keep-alives not forwarded
    assert isinstance(w.of(TextMessage)[0], TextMessage)


def test_nothing_opens_before_the_upgrade(ctx: RelayContext, observer: Observer) -> None:
    w = WsWire(ctx, upgrade=False)
    w.send_raw(upgrade_request()[:40])
    assert w.opened == 0 and observer.done == [] and w.reason is None
    w.send_raw(upgrade_request()[40:])
    assert w.opened == 1


def test_message_with_a_matching_length_is_relayed_as_it_is(ctx: RelayContext) -> None:
    w = WsWire(ctx)
    msg = with_length(OPTIONS + "body")
    w.send_raw(w.ws.send(BytesMessage(data=msg)))
    assert w.forwarded == [msg] and w.forwarded[0] is not None


def test_fragmented_message_is_one_sip_message(ctx: RelayContext) -> None:
    w = WsWire(ctx)
    data = OPTIONS.encode()
    w.send_raw(
        frame(0x1, data[:10], fin=False) + frame(0x0, data[10:30], fin=False) + frame(0x9, b"x")
    )
    assert w.forwarded == [] and w.of(Pong)
    w.send_raw(frame(0x0, data[30:]))
    assert w.forwarded == [with_length(OPTIONS)]


@pytest.mark.parametrize(
    ("kind", "status", "kw"),
    [
        (WsRefusal.NO_SIP_SUBPROTOCOL, 400, {"protocols": ("chat",)}),
        (WsRefusal.NO_SIP_SUBPROTOCOL, 400, {"protocols": ()}),
    ],
)
def test_upgrade_without_sip_is_refused(
    ctx: RelayContext, observer: Observer, kind: WsRefusal, status: int, kw: dict[str, Any]
) -> None:
    w = WsWire(ctx, **kw)
    rejected = w.of(RejectConnection)
    assert rejected and rejected[0].status_code == status
    assert w.reason is CloseReason.WS_REFUSED
    assert refused(ctx, WS_LISTENER, kind) == 1
    assert w.opened == 0 and observer.done == []


def test_origin_allow_list(clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(
        clock,
        observer,
        listener=[{"listen": WS_LISTENER}],
        ws_origins=["https://phone.example.com"],
    )
    ok = WsWire(ctx)
    assert ok.opened == 1
    bad = WsWire(ctx, headers=[(b"Origin", b"https://evil.example")])
    assert bad.of(RejectConnection)[0].status_code == 403
    none = WsWire(ctx, headers=[])
    assert none.of(RejectConnection)[0].status_code == 403
    assert refused(ctx, WS_LISTENER, WsRefusal.ORIGIN) == 2


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (upgrade_request().replace(b"Version: 13", b"Version: 8"), 426),
        (upgrade_request().replace(b"Upgrade: websocket\r\n", b""), 400),
        (b"\x16\x03\x01\x02\x00 hello", 400),
        (upgrade_request().replace(b"Host: 127.0.0.1\r\n", b""), 400),
    ],
    ids=["post", "version", "no-upgrade", "tls-on-ws", "no-host"],
)
def test_bad_upgrade_requests(ctx: RelayContext, request_bytes: bytes, status: int) -> None:
    w = WsWire(ctx, upgrade=False)
    w.send_raw(request_bytes)
    answer = w.raw
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert w.reason is CloseReason.WS_REFUSED
    assert refused(ctx, WS_LISTENER, WsRefusal.BAD_REQUEST) == 1


def test_bad_host_is_refused(ctx: RelayContext) -> None:
    w = WsWire(ctx, upgrade=False)
    w.send_raw(upgrade_request(host="a b@c"))
    assert w.raw.startswith(b"HTTP/1.1 400 ")
    assert refused(ctx, WS_LISTENER, WsRefusal.HOST) == 1


def test_oversize_upgrade_request(ctx: RelayContext) -> None:
    w = WsWire(ctx, upgrade=False)
    big = upgrade_request(extra=[("X-Pad", "a" * 9000)])
    for i in range(0, len(big), 1000):
        w.send_raw(big[i : i + 1000])
        if w.reason is not None:
            break
    assert w.raw.startswith(b"HTTP/1.1 431 ")
    assert refused(ctx, WS_LISTENER, WsRefusal.UPGRADE_TOO_LARGE) == 1


def test_slow_upgrade_request_times_out(ctx: RelayContext, clock: FakeClock) -> None:
    w = WsWire(ctx, upgrade=False)
    w.send_raw(upgrade_request()[:20])
    due = w.core.next_deadline()
    assert due is not None and due <= clock() + ctx.config.ws_upgrade_timeout / 1000
    clock.advance(ctx.config.ws_upgrade_timeout / 1000 - 0.5)
    w.core.handle_timer(clock())
    assert w.reason is None
    clock.advance(1.0)
    w.core.handle_timer(clock())
    assert w.reason is CloseReason.WS_REFUSED
    assert refused(ctx, WS_LISTENER, WsRefusal.UPGRADE_TIMEOUT) == 1


# -- frames ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "kind"),
    [
        (frame(0x1, b"OPTIONS", mask=False), 1002, WsRefusal.UNMASKED_FRAME),
        (frame(0x9, b"ping", fin=False), 1002, WsRefusal.FRAGMENTED_CONTROL),
        (frame(0x9, b"p" * 126), 1002, WsRefusal.PROTOCOL_ERROR),
        (frame(0x3, b"x"), 1002, WsRefusal.PROTOCOL_ERROR),
        (frame(0x1, b"x", rsv=4), 1002, WsRefusal.PROTOCOL_ERROR),
        (frame(0x0, b"x"), 1002, WsRefusal.PROTOCOL_ERROR),
        (frame(0x1, b"OPTIONS \xff\xfe"), 1007, WsRefusal.INVALID_UTF8),
    ],
    ids=["unmasked", "fragmented-ping", "long-ping", "opcode", "rsv", "continuation", "utf8"],
)
def test_frame_rules(ctx: RelayContext, data: bytes, code: int, kind: WsRefusal) -> None:
    w = WsWire(ctx)
    w.send_raw(data)
    assert w.close_code == code
    assert w.reason is CloseReason.WS_REFUSED
    assert refused(ctx, WS_LISTENER, kind) == 1
    assert w.forwarded == []


def test_message_over_max_msg_size_gets_1009(clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer, listener=[{"listen": WS_LISTENER}], max_msg_size=2048)
    w = WsWire(ctx)
    # announced as 1 GB: refused once 2048 bytes arrived, nothing larger kept
    head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 30) + b"\0\0\0\0"
    w.send_raw(head + b"a" * 1500)
    assert w.reason is None
    w.send_raw(b"a" * 1000)
    assert w.close_code == 1009
    assert refused(ctx, WS_LISTENER, WsRefusal.MESSAGE_TOO_LARGE) == 1


@pytest.mark.parametrize(
    "msg",
    [
        with_length(OPTIONS)[:-4] + b"\r\n\r\nOPTIONS sip:x SIP/2.0\r\n\r\n",  # a second one
        with_length(OPTIONS + "abc").replace(b"Length: 3", b"Length: 30"),
        OPTIONS.replace("CSeq", "Content-Length: 0\r\nl: 0\r\nCSeq").encode(),
        b"HELLO\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: x",
    ],
    ids=["smuggled", "too-long", "two-lengths", "not-sip", "no-end"],
)
def test_messages_a_stream_cannot_carry_get_1008(ctx: RelayContext, msg: bytes) -> None:
    w = WsWire(ctx)
    w.send_raw(w.ws.send(BytesMessage(data=msg)))
    assert w.close_code == 1008
    assert refused(ctx, WS_LISTENER, WsRefusal.NOT_SIP) == 1
    assert w.forwarded == []


def test_pings_and_crlf_keepalives(ctx: RelayContext) -> None:
    w = WsWire(ctx)
    w.send_raw(w.ws.send(Ping(payload=b"hb")) + w.ws.send(TextMessage(data="\r\n\r\n")))
    assert [p.payload for p in w.of(Pong)] == [b"hb"]
    assert w.messages == [b"\r\n"]
    assert w.forwarded == []
    assert ctx.stats.keepalives["ping"] == 2


def test_keepalive_flood_closes(clock: FakeClock, observer: Observer) -> None:
    ctx = make_ctx(clock, observer, listener=[{"listen": WS_LISTENER}], tls_keepalive_rate=1.0)
    w = WsWire(ctx)
    for _ in range(12):
        w.send_raw(w.ws.send(Ping(payload=b"x")))
    assert w.reason is CloseReason.KEEPALIVE_FLOOD


def test_client_close_handshake(ctx: RelayContext) -> None:
    w = WsWire(ctx)
    w.send_raw(w.ws.send(CloseConnection(code=1000, reason="bye")))
    assert w.close_code == 1000  # answered
    assert w.reason is CloseReason.EOF
    assert w.core.close_request is not None and "1000" in w.core.close_request[1]


def test_tlstrace_closes_with_a_close_frame(ctx: RelayContext, observer: Observer) -> None:
    w = WsWire(ctx)
    w.core.close(CloseReason.SHUTDOWN, "", flush=True)
    w.client_in(w.core.data_to_send())
    assert w.close_code == 1001
    assert observer.closes == [CloseReason.SHUTDOWN]


def test_partial_message_times_out(ctx: RelayContext, clock: FakeClock) -> None:
    w = WsWire(ctx)
    w.send_raw(frame(0x1, b"OPTIONS", fin=False))
    clock.advance(ctx.config.tcp_max_msg_time + 1)
    w.core.handle_timer(clock())
    assert w.reason is CloseReason.MESSAGE_TIMEOUT


def test_wss_tls_facts_and_refused_upgrade(ctx: RelayContext, observer: Observer, pki: Pki) -> None:
    w = WsWire(ctx, pki=pki, protocols=("chat",))
    assert w.of(RejectConnection)[0].status_code == 400
    assert observer.done == []  # not opened: not traced
    assert ctx.stats.ws_refused[LISTENER, "no_sip_subprotocol"] == 1
    ok = [n for k, n in ctx.stats.handshakes.items() if k[0] == LISTENER and k[2] == "success"]
    assert sum(ok) == 1  # the TLS handshake is counted as for tls:


# -- the framer alone, generated -------------------------------------------------------------------

MESSAGES = st.lists(
    st.tuples(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
        st.booleans(),
        st.integers(min_value=1, max_value=4),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=50))
def test_any_split_gives_the_same_messages(
    messages: list[tuple[str, bool, int]], cuts: list[int]
) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    wire = client.send(Request(host="h", target="/", subprotocols=["sip"]))
    expected = []
    for body, binary, parts in messages:
        text = OPTIONS.replace("\r\n\r\n", f"\r\nContent-Length: {len(body.encode())}\r\n\r\n")
        data = (text + body).encode()
        expected.append(data)
        step = max(len(data) // parts, 1)
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        for i, piece in enumerate(pieces):
            # text fragments may cut a UTF-8 character: only the whole message must be UTF-8
            opcode = (0x2 if binary else 0x1) if i == 0 else 0x0
            wire += frame(opcode, piece, fin=i == len(pieces) - 1)
    framer = WsFramer(max_msg_size=1 << 16)
    got: list[bytes] = []
    pos = 0
    for cut in cuts * (len(wire) // max(sum(cuts), 1) + 1):
        if pos >= len(wire):
            break
        assert framer.feed_into(wire[pos : pos + cut], got) >= 0, framer.refusal
        pos += cut
    if pos < len(wire):
        assert framer.feed_into(wire[pos:], got) >= 0, framer.refusal
    assert got == expected


@pytest.mark.parametrize(
    "payload",
    [b"SIP/2.0 200 OK\r\n\r\n", b"x" * 125, b"x" * 126, b"y" * 65535, b"z" * 65536, b"\xff\xfe"],
)
def test_frames_to_the_client_are_wsprotos_bytes(payload: bytes) -> None:
    framer = WsFramer(max_msg_size=1 << 20)
    client = WSConnection(ConnectionType.CLIENT)
    framer.feed_into(client.send(Request(host="h", target="/", subprotocols=["sip"])), [])
    client.receive_data(framer.data_to_send())
    list(client.events())
    wire = framer.frame([payload, b"\r\n"])
    try:
        expected = framer.ws.send(TextMessage(data=payload.decode()))
    except UnicodeDecodeError:
        expected = framer.ws.send(BytesMessage(data=payload))
    assert wire == expected
    client.receive_data(wire)
    got = [e for e in client.events() if isinstance(e, TextMessage | BytesMessage)]
    assert len(got) == 1 and got[0].message_finished
    data = got[0].data
    assert (data.encode() if isinstance(data, str) else bytes(data)) == payload


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=6),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20),
    st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=20),
)
def test_wss_any_record_and_read_split(
    pki: Pki, bodies: list[int], records: list[int], reads: list[int]
) -> None:
    """Upgrade and messages cut into TLS records of any size, the ciphertext read in pieces
    of any size: the same messages reach the partner, each with its Content-Length."""
    ctx = make_ctx(FakeClock(), Observer(), listener=[{"listen": WS_LISTENER}])
    w = WsWire(ctx, pki=pki, upgrade=False)
    plain = upgrade_request()
    expected = []
    for i, size in enumerate(bodies):
        msg = OPTIONS.replace("ws-1", f"ws-{i}") + "b" * size
        expected.append(with_length(msg))
        plain += frame(0x1, msg.encode())
    assert w.client_tls is not None
    wire = b""
    pos = i = 0
    while pos < len(plain):
        n = records[i % len(records)]
        wire += w.client_tls.send(plain[pos : pos + n])
        pos += n
        i += 1
    pos = i = 0
    while pos < len(wire):
        n = reads[i % len(reads)]
        w.to_relay(wire[pos : pos + n])
        pos += n
        i += 1
    assert w.reason is None
    assert w.opened == 1
    assert w.forwarded == expected


def test_the_feed_names_the_transport_of_websocket_connections() -> None:
    import asyncio
    import json

    from tlstrace.feed import EventFeed, FeedObserver
    from tlstrace.relay.hooks import NullObserver

    async def run() -> list[dict[str, Any]]:
        feed = EventFeed()
        viewer = feed.subscribe()
        assert viewer is not None
        observer = FeedObserver(NullObserver(), feed)
        for transport in ("tls", "wss"):
            conn = Connection("inbound", ("192.0.2.1", 1), ("127.0.0.1", 2), LISTENER)
            conn.transport = transport  # type: ignore[assignment]
            observer.handshake_done(conn)
        return [json.loads(e) for e in viewer.take()[0]]

    tls, wss = asyncio.run(run())
    assert "transport" not in tls  # a TLS connection's events are as they were
    assert wss["transport"] == "wss"
