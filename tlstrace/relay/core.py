"""The connection core of a TLS end, sans-IO: a TLS session paired with a framer, the limits,
the counting and the observer calls. An adapter (relay/tls_leg.py) moves the bytes:

    out = core.receive(data, now)     # framed chunks for the partner (core.batch_msgs messages)
    for ev in core.pop_events(): ...  # HandshakeDone: the connection is open
    transport.write(core.data_to_send())
    partner.send(out, core.batch_msgs) (or core.hold(out, n) while the partner is not ready)
    if core.close_request: close      # (reason, detail, abort)
    transport.write(core.send(chunks, nmsgs, now))
    core.next_deadline() / core.handle_timer(now)
    core.close(reason, detail, flush=...) then transport.write(core.data_to_send())

Per read the hot path is: decrypt (one chunk per TLS record), frame into one list, one counter
increment per message (its label), and one list handed on; no object per message.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final, Protocol

from tlstrace.config import Config
from tlstrace.logs import conn_fields
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.context import RelayContext
from tlstrace.relay.hooks import MessageTracer
from tlstrace.relay.leg_state import LegState
from tlstrace.relay.stats import NOT_NEGOTIATED
from tlstrace.sip.framing import PONG, WHITESPACE, FramingError, SipFramer
from tlstrace.sip.labels import message_label
from tlstrace.sip.registration import RegistrationTracker
from tlstrace.tls.certinfo import CertInfo
from tlstrace.tls.failures import HandshakeFailure
from tlstrace.tls.session import (
    OPEN,
    HandshakeDone,
    HandshakeFailed,
    PeerClosed,
    SessionEvent,
    TlsSession,
)

log = logging.getLogger("tlstrace.relay")

#: seconds of tls_keepalive_rate a connection may send at once
KEEPALIVE_BURST: Final = 10

_QUIET_REASONS: Final = frozenset({CloseReason.EOF, CloseReason.SHUTDOWN})
#: CloseReason.label of each reason, computed once (the property builds a string per call)
_LABELS: Final = {reason: reason.label for reason in CloseReason}


def keepalive_burst(rate: float) -> float:
    """Keep-alives a connection may send at once: ten seconds' worth, and at least two (a rate
    of one every 20 s still allows the RFC 5626 ping and its CRLF)."""
    return max(rate * KEEPALIVE_BURST, 2.0)


class Framer(Protocol):
    """One direction of a message stream split into messages (sip/framing.SipFramer today)."""

    pings: int
    relayed: int
    dropped: int
    error: FramingError | None

    @property
    def buffered(self) -> int: ...

    def feed_into(self, data: bytes, out: list[bytes]) -> int: ...


class LocalIdentity(Protocol):
    """Which certificate this side presented (and, for a server, the domain it belongs to)."""

    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        """(certificate, server domain name or None) for a handshake on `context`; `started`:
        OpenSSL ran on it (else it is only the context the session began with)."""
        ...


class NoIdentity:
    """What a closed core keeps instead of its leg (which holds the core: no cycle is left
    for the garbage collector once the connection ends)."""

    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        return None, None


NO_IDENTITY: Final = NoIdentity()


def _grown(items: list[bytes] | None, more: list[bytes]) -> list[bytes]:
    """`items` with `more` after them; a new list when there were none (lists a connection
    seldom needs are None while empty: an empty list costs 64 bytes)."""
    if items is None:
        return list(more)
    items.extend(more)
    return items


def sip_framer(cfg: Config) -> SipFramer:
    """The framer of what a TLS peer sends, from the configuration."""
    return SipFramer(
        max_msg_size=cfg.max_msg_size,
        pingpong=cfg.tls_crlf_pingpong,
        crlf_drop=cfg.tls_crlf_drop,
        max_chunks=cfg.tls_max_msg_chunks,
    )


class TlsCore(LegState):
    """One TLS connection's logic: server side for clients, client side for peers/backends."""

    def __init__(
        self,
        ctx: RelayContext,
        conn: Connection,
        session: TlsSession,
        identity: LocalIdentity,
        *,
        direction_in: str,
        direction_out: str,
        framer: Framer | None = None,
    ) -> None:
        super().__init__(ctx, "peer", "message_timeout")
        self.conn = conn
        self.session = session
        self.identity = identity
        self.server_side = session.server_side
        #: made at the first bytes to frame, as HAProxy takes a buffer only when data comes:
        #: an idle connection holds none (about 120 bytes), with the settings in force when
        #: the connection opened (`framing`: a reload changes the framing of new ones only)
        self.framer: Framer | None = framer
        self.framing = ctx.config
        stats = ctx.stats
        # this connection's message counters, looked up once
        self.in_counts = stats.messages[conn.listener, direction_in]
        self.out_counts = stats.messages[conn.listener, direction_out]
        self.tracer: MessageTracer | None = None
        #: REGISTERs a client sent on this connection and the expiry its SIP server granted
        #: (server side, made at the first REGISTER): the connection is held open for them
        self.registrations: RegistrationTracker | None = None
        now = ctx.clock()
        #: last SIP or keep-alive traffic (tcp_connection_lifetime)
        self.last_activity = now
        #: TLS records in a row that carried no SIP (tls_max_non_sip_records)
        self.non_sip_records = 0
        #: keep-alive budget (a token bucket refilled at tls_keepalive_rate a second)
        self.ka_tokens = keepalive_burst(ctx.config.tls_keepalive_rate)
        self.ka_time = now
        #: messages in the last batch `receive` returned
        self.batch_msgs = 0
        # (the lists below are None while empty: most connections never need them, and an
        # empty list costs 64 bytes each)
        # messages from the TLS peer waiting for the partner to be ready
        self.pending: list[bytes] | None = None
        self.pending_msgs = 0
        self.pending_size = 0
        #: the partner is being connected (messages wait in `pending` for it)
        self.partner_pending = False
        # messages for the TLS peer waiting for this end's handshake
        self.outq: list[bytes] | None = None
        self.outq_msgs = 0
        self.outq_size = 0
        #: set when the partner closed while its last messages waited for our handshake
        self.close_after_flush: tuple[CloseReason, str] | None = None
        #: ciphertext due before what the session holds (the queue flushed at handshake)
        self.wire: list[bytes] | None = None
        #: handshake completions for the adapter (at most one)
        self.events: list[HandshakeDone] | None = None
        self.closed = False

    # -- input ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The transport is up: start the session (a client writes its hello). A handshake
        that cannot even begin (no protocol version in common) fails here, at once."""
        session = self.session
        session.keylog = self.ctx.keylog
        session.start(now)
        self._session_events(now)

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Bytes from the TLS peer: return the framed chunks (messages and relayed keep-alives)
        for the partner, `batch_msgs` of them messages."""
        session = self.session
        if session.state == OPEN:
            return self._frame(session.receive(data, now), now)
        session.keylog = self.ctx.keylog
        chunks = session.receive(data, now)
        # the handshake's end (or failure) first; a close read after it goes with the batch
        ended: list[SessionEvent] = []
        for ev in session.pop_events():
            if isinstance(ev, PeerClosed):
                ended.append(ev)
            else:
                self._session_event(ev, now)
        session.events = ended or None
        if self.close_request is not None or not (chunks or ended):
            if session.state == OPEN and self.close_request is None and session.record_partial:
                # the read that ended the handshake began the next record: its clock starts
                self.partial_since = now
            return self._note_in([], 0)
        return self._frame(chunks, now)

    def _framer(self) -> Framer:
        framer = self.framer
        if framer is None:
            framer = self.framer = sip_framer(self.framing)
        return framer

    def _frame(self, chunks: list[bytes], now: float) -> list[bytes]:
        out: list[bytes] = []
        framer = self._framer()
        for chunk in chunks:
            if framer.feed_into(chunk, out) < 0:
                nmsgs = self._count(out, now) if out else 0
                self._framing_error()
                return self._note_in(out, nmsgs)
        nmsgs = 0
        size = 0
        if out:
            # (`_count` and `_note_in`, inlined: this is the hot path)
            counts = self.in_counts
            for data in out:
                size += len(data)
                if data[0] in WHITESPACE:
                    continue
                nmsgs += 1
                label = message_label(data)
                counts[label] += 1
                if label == "REGISTER" and self.server_side:
                    if self.registrations is None:
                        self.registrations = RegistrationTracker()
                    self.registrations.request(data, now)
        session = self.session
        if framer.pings or framer.relayed or framer.dropped or session.events or not chunks:
            out = self._frame_rest(chunks, out, nmsgs, now)
            return self._note_in(out, nmsgs)
        # the common case: SIP and nothing else. Only SIP and keep-alives count as traffic
        # for tcp_connection_lifetime
        self.last_activity = now
        self.non_sip_records = 0
        # an incomplete TLS record counts as a partial message too (a slow-loris that drips
        # one record byte by byte never reaches the framer). What is incomplete after a read
        # that completed a message, or a record with no message pending, started in this read:
        # its clock starts now (a client streaming whole records is not a slow-loris)
        if session.rec_left or session.rec_head or framer.buffered:
            if nmsgs or not self.partial_since or (session.records_ended and not framer.buffered):
                self.partial_since = now
        else:
            self.partial_since = 0.0
        self.batch_msgs = nmsgs
        if size:
            conn = self.conn
            conn.bytes_in += size
            conn.msgs_in += nmsgs
            tracer = self.tracer
            if tracer is not None:
                tracer.messages(out, True, self.ctx.wall())
        return out

    def _count(self, out: list[bytes], now: float) -> int:
        """Count the messages of a batch by label; note REGISTERs. Returns how many."""
        nmsgs = 0
        counts = self.in_counts
        for data in out:
            if data[0] in WHITESPACE:
                continue
            nmsgs += 1
            label = message_label(data)
            counts[label] += 1
            if label == "REGISTER" and self.server_side:
                if self.registrations is None:
                    self.registrations = RegistrationTracker()
                self.registrations.request(data, now)
        return nmsgs

    def _note_in(self, out: list[bytes], nmsgs: int) -> list[bytes]:
        """The batch leaves for the partner (or waits for it): count it, trace it."""
        self.batch_msgs = nmsgs
        if out:
            conn = self.conn
            conn.bytes_in += sum(map(len, out))
            conn.msgs_in += nmsgs
            tracer = self.tracer
            if tracer is not None:
                tracer.messages(out, True, self.ctx.wall())
        return out

    def _framing_error(self) -> None:
        framer = self._framer()
        error = framer.error
        assert error is not None
        stats = self.ctx.stats
        stats.keepalives["crlf_relayed"] += framer.relayed
        stats.keepalives["crlf_dropped"] += framer.dropped
        framer.relayed = framer.dropped = framer.pings = 0
        stats.framing_errors[error.kind.value] += 1
        self._request_close(CloseReason.FRAMING_ERROR, f"{error.kind.value}: {error.detail}")

    def _frame_rest(
        self, chunks: list[bytes], out: list[bytes], nmsgs: int, now: float
    ) -> list[bytes]:
        """`_frame` for a read with keep-alives, no SIP, or the peer's close after it."""
        framer = self._framer()
        stats = self.ctx.stats
        keepalives = 0
        if framer.relayed or framer.dropped:
            keepalives = framer.relayed + framer.dropped
            stats.keepalives["crlf_relayed"] += framer.relayed
            stats.keepalives["crlf_dropped"] += framer.dropped
            framer.relayed = framer.dropped = 0
        pings = framer.pings
        framer.pings = 0
        session = self.session
        if session.events:  # the peer ended the session after these
            for ev in session.pop_events():
                self._session_event(ev, now)
            return out
        if pings or keepalives:
            # (a client's; a peer's keep-alives answer those of the local SIP server, which
            # shares the pooled connection between its workers: not limited)
            if self.server_side and not self._keepalives_allowed(pings + keepalives, now):
                rate = self.ctx.config.tls_keepalive_rate
                self._request_close(
                    CloseReason.KEEPALIVE_FLOOD,
                    f"over {rate:g} keep-alives a second (tls_keepalive_rate)",
                )
                return out
            if pings:
                # the pongs for the pings read together leave in one record; one CRLF goes on,
                # so the backend's connection does not idle out while the client only sends
                # keep-alives
                stats.keepalives["ping"] += pings
                session.queue(PONG * pings)
                out.append(PONG)
        ended = session.records_ended
        if chunks or pings or keepalives:
            # only SIP and keep-alives count as traffic for tcp_connection_lifetime
            self.last_activity = now
            self.non_sip_records = 0
        elif ended:
            self.non_sip_records += ended
            limit = self.ctx.config.tls_max_non_sip_records
            if self.non_sip_records >= limit:
                self._request_close(
                    CloseReason.NON_SIP_RECORDS,
                    f"{self.non_sip_records} TLS records in a row without SIP "
                    "(tls_max_non_sip_records)",
                )
                return out
        buffered = framer.buffered
        partial = bool(session.rec_left or session.rec_head or buffered)
        if partial and (nmsgs or pings or keepalives or (ended and not buffered)):
            self.partial_since = now
        elif not partial:
            self.partial_since = 0.0
        elif not self.partial_since:
            self.partial_since = now
        return out

    def _keepalives_allowed(self, n: int, now: float) -> bool:
        """Take `n` keep-alives from this connection's budget; False when it is overdrawn."""
        rate = self.ctx.config.tls_keepalive_rate
        if not rate:
            return True
        tokens = min(keepalive_burst(rate), self.ka_tokens + (now - self.ka_time) * rate)
        self.ka_time = now
        self.ka_tokens = tokens - n
        return self.ka_tokens >= 0

    # -- output ----------------------------------------------------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int, now: float) -> bytes:
        """Messages for the TLS peer: return the ciphertext to write (b"" while they wait for
        the handshake)."""
        if self.closed:
            return b""
        if self.session.state != OPEN:
            self.outq = _grown(self.outq, chunks)
            self.outq_msgs += nmsgs
            self.outq_size += sum(map(len, chunks))
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # (TlsSession.send, inlined: this is the hot path)
        session = self.session
        sslobj = session.sslobj
        assert sslobj is not None
        sslobj.write(data)
        session.urgent = False
        wire = session.outgoing.read()
        conn = self.conn
        conn.bytes_out += len(data)
        conn.msgs_out += nmsgs
        self.last_activity = now
        counts = self.out_counts
        for chunk in chunks:
            if chunk[0] not in WHITESPACE:  # keep-alives are not messages
                counts[message_label(chunk)] += 1
        tracer = self.tracer
        if tracer is not None:
            tracer.messages(chunks, False, self.ctx.wall())
        reg = self.registrations
        if reg is not None and reg.pending:
            until = reg.until
            for chunk in chunks:
                if chunk.startswith(b"SIP/2.0 "):
                    reg.response(chunk, now)
            if reg.until != until:
                conn.registered_until = self.ctx.wall() + (reg.until - now) if reg.until else None
        return wire

    def drop_outq(self) -> int:
        """Forget what waits for the handshake (it will not happen); return its messages."""
        n = self.outq_msgs
        self.outq, self.outq_msgs, self.outq_size = None, 0, 0
        return n

    def data_to_send(self) -> bytes:
        """Ciphertext due now besides what `send` returned (handshake, alerts, pongs,
        close_notify, the queue flushed after the handshake)."""
        due = self.session.data_to_send()
        wire = self.wire
        if not wire:
            return due
        self.wire = None
        if due:
            wire.append(due)
        return b"".join(wire)

    def hold(self, chunks: list[bytes], nmsgs: int) -> None:
        """Keep messages until the partner is ready; bounded by `backlog_in`."""
        self.pending = _grown(self.pending, chunks)
        self.pending_msgs += nmsgs
        self.pending_size += sum(map(len, chunks))

    def take_pending(self) -> tuple[list[bytes], int]:
        chunks, nmsgs = self.pending, self.pending_msgs
        self.pending, self.pending_msgs, self.pending_size = None, 0, 0
        return (chunks if chunks is not None else []), nmsgs

    def drained(self) -> bool:
        """Nothing read waits here: no half-read message, nothing held for a partner that is
        connecting, nothing queued for our own handshake."""
        return (
            super().drained()
            and self.pending is None
            and not self.partner_pending
            and self.outq is None
        )

    def backlog_in(self) -> bool:
        return self.pending_size > self.ctx.config.conn_buffer_limit

    def backlog_out(self) -> bool:
        return self.outq_size > self.ctx.config.conn_buffer_limit

    def pop_events(self) -> list[HandshakeDone]:
        events = self.events
        if events is None:
            return []
        self.events = None
        return events

    def _add_event(self, ev: HandshakeDone) -> None:
        if self.events is None:
            self.events = [ev]
        else:
            self.events.append(ev)

    def partner_closed(self, reason: CloseReason, detail: str) -> bool:
        """The partner ended: False when our close waits for the partner's last messages to
        leave after our handshake (then `close_request` is set once they have)."""
        if self.outq and self.session.state != OPEN and not self.closed:
            self.close_after_flush = (reason, detail)
            return False
        return True

    # -- state changes ---------------------------------------------------------------------------

    def _session_events(self, now: float) -> None:
        for ev in self.session.pop_events():
            self._session_event(ev, now)

    def _session_event(self, ev: SessionEvent, now: float) -> None:
        if isinstance(ev, HandshakeDone):
            self._handshake_done(ev, now)
        elif isinstance(ev, HandshakeFailed):
            self._handshake_failed(ev)
        elif ev.error:
            self._request_close(CloseReason.READ_ERROR, ev.detail)
        else:
            self._request_close(CloseReason.EOF, ev.detail)

    def _handshake_done(self, ev: HandshakeDone, now: float) -> None:
        self._note_handshake(ev)
        conn = self.conn
        self.tracer = self.ctx.observer.handshake_done(conn)
        conn.traced = self.tracer is not None
        self._add_event(ev)
        if self.outq:
            chunks, nmsgs = self.outq, self.outq_msgs
            self.outq, self.outq_msgs, self.outq_size = None, 0, 0
            self.wire = _grown(self.wire, [self.send(chunks, nmsgs, now)])
        if self.close_after_flush is not None:
            reason, detail = self.close_after_flush
            self._request_close(reason, detail)

    def _note_session(self, context: ssl.SSLContext, started: bool) -> None:
        """What the connection keeps of a handshake that ended, well or not: its key-log
        lines, our certificate, and the domain it ran on (once it started)."""
        conn = self.conn
        if self.session.keylog_lines is not None:
            conn.keylog = self.session.keylog_lines
        cert, domain = self.identity.local_cert(context, started)
        conn.local_cert = cert
        if domain is not None:
            conn.server_domain = domain

    def _note_handshake(self, ev: HandshakeDone) -> None:
        """The handshake's facts on the connection, and its counters."""
        conn = self.conn
        self._note_session(ev.context, True)
        conn.state = "open"
        conn.tls_version = ev.version
        conn.cipher = ev.cipher
        conn.alpn = ev.alpn
        conn.resumed = ev.resumed
        conn.handshake_ms = ev.elapsed * 1000
        conn.peer_cert_der = ev.peer_cert_der
        conn.sni = ev.sni
        stats = self.ctx.stats
        stats.handshakes[
            conn.listener,
            conn.direction,
            "success",
            conn.tls_version or NOT_NEGOTIATED,
            conn.cipher or NOT_NEGOTIATED,
        ] += 1
        stats.handshake_seconds[conn.listener, conn.direction].observe(ev.elapsed)

    def _handshake_failed(self, ev: HandshakeFailed) -> None:
        conn = self.conn
        self._note_session(ev.context, ev.started)
        kind = ev.kind
        hello = ev.hello
        if hello is not None:
            conn.sni, conn.client_random = hello.sni, hello.client_random
        self.ctx.stats.handshake_failed(conn.listener, conn.direction, kind.value)
        level = logging.DEBUG if kind is HandshakeFailure.PEER_CLOSED else logging.INFO
        if log.isEnabledFor(level):  # (its fields are not built for a line no one reads)
            log.log(
                level,
                "conn %d %s %s:%d: TLS handshake failed: %s (%s)",
                conn.id,
                conn.direction,
                conn.remote[0],
                conn.remote[1],
                kind.value,
                ev.message,
                extra={**conn_fields(conn), "reason": kind.value},
            )
        self.ctx.observer.handshake_failed(conn, kind, ev.message)
        self._request_close(CloseReason.HANDSHAKE_FAILED, kind.value)

    def _request_close(self, reason: CloseReason, detail: str, abort: bool = False) -> None:
        if self.close_request is None:
            self.close_request = (reason, detail, abort)

    def connection_lost(self, error: str | None, now: float) -> None:
        """The transport closed under us: `close_request` says how to end."""
        session = self.session
        if session.state != OPEN and self.conn.state == "handshake":
            if self.server_side and not session.sniffed:
                # closed before sending a byte (a port probe, a TCP health check): no
                # handshake was attempted, so there is no failure to report
                self._request_close(CloseReason.EOF, "closed before the handshake began")
                return
            session.fail(HandshakeFailure.PEER_CLOSED, "connection closed during the handshake")
            self._session_events(now)
            return
        if error is None:
            self._request_close(CloseReason.EOF, "")
        else:
            self._request_close(CloseReason.READ_ERROR, error)

    # -- timers ------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.session.state != OPEN:
            return self.session.next_deadline()
        due = super().next_deadline()
        idle = self._idle_deadline()
        return idle if due is None or idle < due else due

    def _idle_deadline(self) -> float:
        cfg = self.ctx.config
        idle = self.last_activity + cfg.tcp_connection_lifetime
        reg = self.registrations
        if reg is not None and reg.until:
            idle = max(idle, reg.until + cfg.registration_margin)
        return idle

    def handle_timer(self, now: float) -> None:
        if self.closed or self.close_request is not None:
            return
        if self.session.state != OPEN:
            if self.conn.state == "handshake":
                self.session.handle_timer(now)
                if self.session.events:
                    self._session_events(now)
            return
        super().handle_timer(now)

    def overdue(self, now: float) -> tuple[CloseReason, str] | None:
        due = super().overdue(now)
        cfg = self.ctx.config
        if due is None and now - self.last_activity > cfg.tcp_connection_lifetime:
            reg = self.registrations
            if reg is not None and now < reg.until + cfg.registration_margin:
                return None  # the SIP server still routes calls to this phone over it
            return CloseReason.IDLE_TIMEOUT, ""
        return due

    # -- closing -----------------------------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str, *, flush: bool) -> None:
        """End the connection: count, log, tell the observer; with `flush`, close_notify is in
        `data_to_send()`."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        was_open = conn.state == "open"
        conn.state = "closed"
        conn.close_reason = reason
        stats = self.ctx.stats
        # messages read before the close wait for a partner that is still connecting: it
        # delivers them, so they are not dropped yet
        lost = self.outq_msgs + (0 if self.partner_pending else self.pending_msgs)
        if lost:
            stats.dropped_messages[_LABELS[reason]] += lost
        if flush and was_open:
            self.session.close()
        else:
            self.session.abort()
            self.wire = None
        stats.closed[conn.listener, _LABELS[reason]] += 1
        # bytes are counted on the connection while it lives (cheaper on the message path)
        stats.bytes[conn.listener, "from_tls"] += conn.bytes_in
        stats.bytes[conn.listener, "to_tls"] += conn.bytes_out
        level = logging.DEBUG if reason in _QUIET_REASONS else logging.INFO
        if reason is CloseReason.FRAMING_ERROR:
            level = logging.WARNING
        # (a handshake failure was logged with its cause; a line below the level is not
        # built: its fields cost more than the rest of the close)
        if reason is not CloseReason.HANDSHAKE_FAILED and log.isEnabledFor(level):
            log.log(
                level,
                "conn %d %s %s:%d closed: %s%s",
                conn.id,
                conn.direction,
                conn.remote[0],
                conn.remote[1],
                reason.value,
                f" ({detail})" if detail else "",
                extra={**conn_fields(conn), "reason": reason.label},
            )
        self.identity = NO_IDENTITY
        try:
            self.ctx.observer.closed(conn, reason, self.tracer)
        except Exception:  # tracing must not keep a connection from closing
            log.exception("conn %d: tracing its close failed", conn.id)
