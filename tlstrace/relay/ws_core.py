"""The connection core of a WebSocket client (wss: and ws: listeners), sans-IO: a TlsCore whose
framer is the WebSocket server (tlstrace/ws/framer.py). On `wss:` it runs over the TLS session;
on `ws:` over `PlainSession`, which passes bytes through.

What changes from TLS:
- the connection opens (the observer hears of it, tracing starts, the backend is connected)
  when the Upgrade is accepted, not when the TLS handshake ends; the TLS handshake's facts and
  counters are kept as for TLS;
- what the framer has to send (the 101 or the refusal, pongs, close frames) goes to the client
  with the next write; messages for the client leave as one text frame each;
- a refusal (tlstrace/ws/framer.WsRefusal) is counted in `stats.ws_refused`, logged with the
  connection and closes it ("WebSocket refused"); the client's close frame is answered and
  closes it as "EOF received";
- keep-alives are CRLF pings in a message of their own and ping frames: both answered, both
  within tls_keepalive_rate;
- an incomplete message (or Upgrade request) waits at most tcp_max_msg_time; the Upgrade must
  be complete within ws_upgrade_timeout.
"""

from __future__ import annotations

import ssl
from typing import Final

from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.context import RelayContext
from tlstrace.relay.core import LocalIdentity, TlsCore
from tlstrace.sip.framing import WHITESPACE
from tlstrace.sip.labels import message_label
from tlstrace.sip.registration import RegistrationTracker
from tlstrace.tls.session import OPEN, HandshakeDone, TlsSession
from tlstrace.ws.framer import WsFramer, WsRefusal

#: close codes tlstrace sends when it ends an open WebSocket connection itself
_GOING_AWAY: Final = frozenset(
    {CloseReason.SHUTDOWN, CloseReason.IDLE_TIMEOUT, CloseReason.CLOSED_BY_API}
)


class PlainSession(TlsSession):
    """No TLS (ws: listeners): the bytes pass through; the session is open from the start."""

    def __init__(self, now: float) -> None:  # TlsSession's state, without OpenSSL
        self.server_side = True
        self.state = OPEN
        self.created = now
        self.deadline = 0.0
        self.sniffed = True
        self.keylog = None
        self.keylog_lines = None
        self.rec_left = 0
        self.rec_head = b""
        self.records_in = self.records_seen = self.records_ended = 0
        self.urgent = False
        self.events = None
        self.obj = None
        self.sslobj = None
        self.sni_seen = None
        self.sni_mismatch = False
        self.pending: list[bytes] = []

    def start(self, now: float) -> None:
        return None

    def receive(self, data: bytes, now: float) -> list[bytes]:
        return [data] if self.state == OPEN else []

    def send(self, data: bytes) -> bytes:
        if not self.pending:
            return data
        self.pending.append(data)
        return self.data_to_send()

    def queue(self, data: bytes) -> None:
        self.pending.append(data)
        self.urgent = True

    def data_to_send(self) -> bytes:
        self.urgent = False
        if not self.pending:
            return b""
        out, self.pending = self.pending, []
        return b"".join(out)

    def close(self) -> None:
        self.state = 2  # CLOSED; what is queued still leaves

    def abort(self) -> None:
        self.state = 2
        self.pending = []

    def next_deadline(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None


_no_tls: ssl.SSLContext | None = None


def _no_tls_context() -> ssl.SSLContext:
    """The context a ws: connection's opening event names (there is no TLS: never used)."""
    global _no_tls
    if _no_tls is None:
        _no_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return _no_tls


def ws_framer(ctx: RelayContext) -> WsFramer:
    cfg = ctx.config
    return WsFramer(
        max_msg_size=cfg.max_msg_size,
        max_upgrade_size=cfg.ws_max_upgrade_size,
        origins=frozenset(cfg.ws_origins) if cfg.ws_origins else None,
    )


class WsCore(TlsCore):
    """A WebSocket client connection's logic (server side)."""

    def __init__(
        self,
        ctx: RelayContext,
        conn: Connection,
        session: TlsSession,
        identity: LocalIdentity,
        framer: WsFramer | None = None,
    ) -> None:
        ws = framer if framer is not None else ws_framer(ctx)
        super().__init__(
            ctx,
            conn,
            session,
            identity,
            direction_in="from_client",
            direction_out="to_client",
            framer=ws,
        )
        self.ws = ws
        #: the TLS handshake's end (wss:), reported when the Upgrade is accepted
        self.tls_done: HandshakeDone | None = None
        self.ws_open = False
        #: when the wait for the Upgrade request started (0.0: not yet, or over)
        self.upgrade_since = 0.0
        if isinstance(session, PlainSession):
            conn.state = "open"
            self.upgrade_since = ctx.clock()

    # -- input -----------------------------------------------------------------------------------

    def _frame(self, chunks: list[bytes], now: float) -> list[bytes]:
        out: list[bytes] = []
        ws = self.ws
        if chunks:  # the records of one read, parsed in one pass
            ws.feed_into(chunks[0] if len(chunks) == 1 else b"".join(chunks), out)
        wire = ws.data_to_send()
        if wire:
            self.session.queue(wire)
        if ws.upgraded and not self.ws_open:
            self._ws_opened(now)
        nmsgs = self._count(out, now) if out else 0
        session = self.session
        if ws.refusal is not None:
            self._refused(*ws.refusal)
        elif ws.peer_closed is not None:
            code, reason = ws.peer_closed
            self._request_close(
                CloseReason.EOF, f"WebSocket close {code}" + (f" ({reason})" if reason else "")
            )
        elif session.events:  # the peer ended the TLS session after these
            for ev in session.pop_events():
                self._session_event(ev, now)
        else:
            self._keepalives(chunks, out, now)
        if self.close_request is None:  # (the Upgrade request has its own timeout)
            self.note_partial(self.ws_open and bool(ws.buffered), now)
        return self._note_in(out, nmsgs)

    def _keepalives(self, chunks: list[bytes], out: list[bytes], now: float) -> None:
        ws = self.ws
        pings = ws.pings + ws.ws_pings + ws.dropped
        if pings:
            stats = self.ctx.stats
            stats.keepalives["ping"] += ws.pings + ws.ws_pings
            stats.keepalives["crlf_dropped"] += ws.dropped
            ws.pings = ws.ws_pings = ws.dropped = 0
            if not self._keepalives_allowed(pings, now):
                rate = self.ctx.config.tls_keepalive_rate
                self._request_close(
                    CloseReason.KEEPALIVE_FLOOD,
                    f"over {rate:g} keep-alives a second (tls_keepalive_rate)",
                )
                return
        if chunks and (out or pings or not self.ws_open):
            self.last_activity = now
            self.non_sip_records = 0
        elif self.session.records_ended and not chunks:
            self.non_sip_records += self.session.records_ended
            if self.non_sip_records >= self.ctx.config.tls_max_non_sip_records:
                self._request_close(
                    CloseReason.NON_SIP_RECORDS,
                    f"{self.non_sip_records} TLS records in a row without SIP "
                    "(tls_max_non_sip_records)",
                )

    def _refused(self, kind: WsRefusal, detail: str) -> None:
        self.ctx.stats.ws_refused[self.conn.listener, kind.value] += 1
        self._request_close(CloseReason.WS_REFUSED, f"{kind.value}: {detail}")

    # -- opening ---------------------------------------------------------------------------------

    def _handshake_done(self, ev: HandshakeDone, now: float) -> None:
        """The TLS handshake ended: its facts and counters as for TLS; the connection opens
        when the Upgrade is accepted."""
        self._note_handshake(ev)
        self.tls_done = ev
        self.upgrade_since = now

    def _ws_opened(self, now: float) -> None:
        self.ws_open = True
        self.upgrade_since = 0.0
        conn = self.conn
        request = self.ws.request
        if request is not None:
            conn.ws_path = request.path
            conn.ws_origin = request.origin
            conn.user_agent = request.user_agent
        ev = self.tls_done or HandshakeDone(
            None, None, None, False, None, None, _no_tls_context(), now - self.session.created
        )
        self.tracer = self.ctx.observer.handshake_done(conn)
        conn.traced = self.tracer is not None
        self._add_event(ev)

    # -- output ----------------------------------------------------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int, now: float) -> bytes:
        """Messages for the client, one frame each: return the bytes to write."""
        if self.closed or not self.ws_open or self.session.state != OPEN:
            return b""
        framed = self.ws.frame(chunks)
        wire = self.session.send(framed) if framed else self.session.data_to_send()
        conn = self.conn
        conn.bytes_out += sum(map(len, chunks))
        conn.msgs_out += nmsgs
        self.last_activity = now
        counts = self.out_counts
        for chunk in chunks:
            if chunk[0] not in WHITESPACE:
                counts[message_label(chunk)] += 1
        tracer = self.tracer
        if tracer is not None:
            tracer.messages(chunks, False, self.ctx.wall())
        reg: RegistrationTracker | None = self.registrations
        if reg is not None and reg.pending:
            until = reg.until
            for chunk in chunks:
                if chunk.startswith(b"SIP/2.0 "):
                    reg.response(chunk, now)
            if reg.until != until:
                conn.registered_until = self.ctx.wall() + (reg.until - now) if reg.until else None
        return wire

    # -- timers ----------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        due = super().next_deadline()
        if self.upgrade_since and self.session.state == OPEN:
            t = self.upgrade_since + self.ctx.config.ws_upgrade_timeout / 1000
            if due is None or t < due:
                due = t
        return due

    def handle_timer(self, now: float) -> None:
        if self.closed or self.close_request is not None:
            return
        if self.upgrade_since and self.session.state == OPEN:
            timeout = self.ctx.config.ws_upgrade_timeout
            if now - self.upgrade_since > timeout / 1000:
                self._refused(
                    WsRefusal.UPGRADE_TIMEOUT,
                    f"no complete Upgrade request within {timeout} ms (ws_upgrade_timeout)",
                )
                return
        super().handle_timer(now)

    # -- closing ---------------------------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str, *, flush: bool) -> None:
        """As TlsCore.close, after a close frame when tlstrace ends an open connection."""
        if not self.closed and flush and self.ws_open and self.session.state == OPEN:
            self.ws.close(1001 if reason in _GOING_AWAY else 1000)
            wire = self.ws.data_to_send()
            if wire:
                self.session.queue(wire)
        super().close(reason, detail, flush=flush)
