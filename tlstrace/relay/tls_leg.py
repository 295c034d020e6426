"""One TLS connection driven through OpenSSL memory BIOs on top of a plain TCP transport.

Using `ssl.SSLObject` directly (instead of asyncio's TLS transport) keeps per-connection memory
small (asyncio's TLS protocol allocates a 256 KiB read buffer per connection), lets each TLS
record count as one read for `tls_max_msg_chunks`, lets the first bytes be inspected before
OpenSSL sees them, and ties OpenSSL's key-log lines to the connection whose handshake runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING

from tlstrace.logs import conn_fields
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.hooks import MessageTracer
from tlstrace.relay.leg import BaseLeg
from tlstrace.relay.stats import message_label
from tlstrace.sip.framing import (
    PONG,
    WHITESPACE,
    Dropped,
    FramingError,
    KeepAlive,
    Message,
    Ping,
    SipFramer,
)
from tlstrace.sip.registration import RegistrationTracker
from tlstrace.tls import records
from tlstrace.tls.certinfo import CertInfo
from tlstrace.tls.clienthello import (
    MAX_HELLO_BYTES,
    TLS1_2,
    Hello,
    HelloKind,
    HelloReader,
    sniff,
)
from tlstrace.tls.failures import HandshakeFailure, classify

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay

log = logging.getLogger("tlstrace.relay")

_READ_SIZE = 65536
#: seconds of tls_keepalive_rate a connection may send at once
_KEEPALIVE_BURST = 10


def keepalive_burst(rate: float) -> float:
    """Keep-alives a connection may send at once: ten seconds' worth, and at least two (a rate
    of one every 20 s still allows the RFC 5626 ping and its CRLF)."""
    return max(rate * _KEEPALIVE_BURST, 2.0)


_QUIET_REASONS = frozenset({CloseReason.EOF, CloseReason.SHUTDOWN})


class TlsLeg(BaseLeg):
    """The TLS side of a relayed connection (server side for clients, client side for peers)."""

    def __init__(
        self,
        relay: Relay,
        conn: Connection,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        super().__init__(relay)
        cfg = relay.config
        self.conn = conn
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj: ssl.SSLObject | None = None
        self.framer = SipFramer(
            max_msg_size=cfg.max_msg_size,
            pingpong=cfg.tls_crlf_pingpong,
            crlf_drop=cfg.tls_crlf_drop,
            max_chunks=cfg.tls_max_msg_chunks,
        )
        # messages from the TLS peer waiting for the partner to be ready
        self.pending: list[bytes] = []
        self.pending_msgs = 0
        self.pending_size = 0
        # messages for the TLS peer waiting for this leg's handshake
        self.outq: list[bytes] = []
        self.outq_msgs = 0
        self.outq_size = 0
        #: the partner is being connected (messages wait in `pending` for it)
        self.partner_pending = False
        #: set when the partner closed while its last messages waited for our handshake
        self.close_after_flush: tuple[CloseReason, str] | None = None
        self.tracer: MessageTracer | None = None
        #: REGISTERs a client sent on this connection and the expiry its SIP server granted
        #: (server legs, made at the first REGISTER): the connection is held open for them
        self.registrations: RegistrationTracker | None = None
        # this leg's message counters, looked up once
        self.in_counts = relay.stats.messages[conn.listener, self.relay_direction_in]
        self.out_counts = relay.stats.messages[conn.listener, self.relay_direction_out]
        self.sniffed = not server_side
        #: set on a server leg that must read the whole ClientHello (for its SNI) before it
        #: knows the context to start on (see choose_context)
        self.hello: HelloReader | None = None
        #: what that reading found (kept to explain a failed handshake)
        self.hello_facts: Hello | None = None
        # where the incoming byte stream stands between TLS records (see data_received)
        self.rec_left = 0
        self.rec_head = b""
        #: the first bytes a client sent, kept during the handshake to explain a failure
        self.first_bytes = b""
        self.last_activity = relay.loop.time()
        self.handshake_started = time.perf_counter()
        self.handshake_timer: asyncio.TimerHandle | None = None
        #: TLS records seen whole (records_in), and those already accounted for by _read;
        #: records in a row that carried no SIP (see tls_max_non_sip_records)
        self.records_in = 0
        self.records_seen = 0
        self.non_sip_records = 0
        #: keep-alive budget (a token bucket refilled at tls_keepalive_rate a second)
        self.ka_tokens = keepalive_burst(cfg.tls_keepalive_rate)
        self.ka_time = self.last_activity

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # closed while connecting
            transport.close()
            return
        self.attach(transport)
        self.relay.register_tls(self)
        if self.hello is None:
            self._start_tls(self.context)
        self.handshake_timer = self.relay.loop.call_later(
            self.relay.config.tls_handshake_timeout / 1000, self._handshake_timed_out
        )
        if not self.server_side:
            self._do_handshake()

    def data_received(self, data: bytes) -> None:
        # follow TLS record boundaries from the first byte (see tls/records.py); the common
        # case, one whole record, costs a length check
        n = len(data)
        if self.rec_left or self.rec_head or n < 5 or 5 + (data[3] << 8 | data[4]) != n:
            self.rec_left, self.rec_head, ended = records.advance_counting(
                self.rec_left, self.rec_head, data
            )
            self.records_in += ended
        else:
            self.records_in += 1
        if self.conn.state != "open":
            self._handshake_data(data)
            return
        self.incoming.write(data)
        self._read()

    def connection_lost(self, exc: Exception | None) -> None:
        self.live = False
        if not self.closed:
            if self.conn.state == "handshake" and self.server_side and not self.sniffed:
                # closed before sending a byte (a port probe, a TCP health check): no
                # handshake was attempted, so there is no failure to report
                self.close(CloseReason.EOF, "closed before the handshake began")
            elif self.conn.state == "handshake":
                self._handshake_failed(
                    HandshakeFailure.PEER_CLOSED, "connection closed during the handshake"
                )
            else:
                self.close(
                    CloseReason.EOF if exc is None else CloseReason.READ_ERROR,
                    str(exc) if exc else "",
                )
        self.relay.unregister(self)

    # -- Partner interface (called by the other leg) -----------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        """Encrypt and write messages towards this leg's TLS peer."""
        if self.closed:
            return
        if self.conn.state != "open":
            self._queue_out(chunks, nmsgs)
            return
        obj = self.obj
        assert obj is not None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        obj._sslobj.write(data)  # type: ignore[attr-defined]
        self.transport.write(self.outgoing.read())
        conn = self.conn
        conn.bytes_out += len(data)
        conn.msgs_out += nmsgs
        self.last_activity = self.relay.loop.time()
        counts = self.out_counts
        tracer = self.tracer
        for chunk in chunks:
            if chunk[0] not in WHITESPACE:  # keep-alives are not messages
                counts[message_label(chunk)] += 1
        if tracer is not None:
            tracer.messages(chunks, False, time.time())
        reg = self.registrations
        if reg is not None and reg.pending:
            until = reg.until
            for chunk in chunks:
                if chunk.startswith(b"SIP/2.0 "):
                    reg.response(chunk, self.last_activity)
            if reg.until != until:
                self._note_registration(reg)

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        if self.outq and self.conn.state == "handshake" and not self.closed:
            # the partner's last messages wait for our handshake: send them, then close
            self.close_after_flush = (reason, detail)
            return
        self.close(reason, detail)

    # -- handshake -----------------------------------------------------------------------------

    def _start_tls(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.obj = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=self.server_side,
            server_hostname=self.server_hostname,
        )

    def choose_context(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a client's handshake, from the SNI tlstrace read in its ClientHello
        (server legs that set `hello`)."""
        return self.context

    def _handshake_data(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.sniffed:
            self.sniffed = True
            if data[0] != 0x16:  # not a TLS handshake record: say what it is
                hello = sniff(data)
                if hello.kind is HelloKind.PLAIN_SIP:
                    self._handshake_failed(
                        HandshakeFailure.PLAIN_SIP, "plain SIP sent to the TLS port"
                    )
                    return
                if hello.kind is HelloKind.NOT_TLS:
                    self._handshake_failed(
                        HandshakeFailure.NOT_TLS,
                        f"not a TLS ClientHello (first bytes {data[:8].hex()})",
                    )
                    return
                if hello.kind is HelloKind.SSLV2:
                    self._handshake_failed(
                        HandshakeFailure.UNSUPPORTED_VERSION, "SSLv2-style ClientHello"
                    )
                    return
        if self.obj is None:
            # the whole ClientHello first: its SNI chooses the context (OpenSSL's session
            # cache, ticket keys and client-certificate policy are the domain's own)
            reader = self.hello
            assert reader is not None
            hello = reader.feed(data)
            if hello.kind is HelloKind.INCOMPLETE:
                if reader.total > MAX_HELLO_BYTES:
                    self._handshake_failed(
                        HandshakeFailure.HELLO_TOO_LARGE,
                        f"no complete ClientHello in {MAX_HELLO_BYTES} bytes",
                    )
                return
            self.hello = None
            self.hello_facts = hello
            self._start_tls(self.choose_context(hello.sni))
            data = bytes(reader.raw)
        elif not self.first_bytes and self.server_side:
            self.first_bytes = data  # parsed only if the handshake fails
        self.incoming.write(data)
        self._do_handshake()

    def _do_handshake(self) -> None:
        obj = self.obj
        assert obj is not None
        tap = self.relay.keylog
        if tap is not None:
            tap.current = self.conn.keylog
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError, ValueError) as e:
            self._flush()  # the alert
            if getattr(obj, "tlstrace_sni_mismatch", False):
                self._handshake_failed(
                    HandshakeFailure.SNI_MISMATCH,
                    f"OpenSSL read the SNI {getattr(obj, 'tlstrace_sni', None)!r} where "
                    "tlstrace read another: refused",
                )
                return
            self._handshake_failed(*classify(e))
            return
        finally:
            if tap is not None:
                tap.current = None
        if not self.server_side or obj.version() != "TLSv1.3":
            self._flush()
        # else: all a TLS 1.3 server has left to send are session tickets; they go out with
        # the first response instead of costing a send of their own
        self._handshake_complete()

    def _handshake_complete(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        obj = self.obj
        assert obj is not None
        conn = self.conn
        conn.state = "open"
        conn.tls_version = obj.version()
        cipher = obj.cipher()
        conn.cipher = cipher[0] if cipher else None
        conn.alpn = obj.selected_alpn_protocol()
        conn.resumed = obj.session_reused
        elapsed = time.perf_counter() - self.handshake_started
        conn.handshake_ms = elapsed * 1000
        conn.peer_cert_der = obj.getpeercert(binary_form=True)
        conn.local_cert = self.local_cert()
        if self.server_side:
            # the name the client sent now: on a TLS 1.2 resumption OpenSSL's callback is given
            # the one stored in the session
            facts = self.hello_facts
            if facts is None and conn.resumed and self.first_bytes:
                facts = sniff(self.first_bytes)
            conn.sni = (
                facts.sni
                if facts is not None and facts.client_random is not None
                else getattr(obj, "tlstrace_sni", None)
            )
        else:
            conn.sni = self.server_hostname
        self.first_bytes, self.hello_facts = b"", None
        self.records_seen = self.records_in  # the handshake's records are not counted
        self.relay.handshake_done(self, elapsed)
        if self.closed:
            return
        self.tracer = self.relay.observer.handshake_done(conn)
        conn.traced = self.tracer is not None
        self.on_ready()
        if not self.closed:
            self.flush_outq()
        if not self.closed and self.incoming.pending:
            self._read()

    def _handshake_failed(self, kind: HandshakeFailure, message: str) -> None:
        if self.closed:
            return
        conn = self.conn
        conn.local_cert = self.local_cert()
        hello = self.hello_facts
        if hello is None and self.first_bytes:
            hello = sniff(self.first_bytes)
        elif hello is None and self.hello is not None and self.hello.total:
            hello = sniff(bytes(self.hello.raw))
        if hello is not None:
            self.first_bytes, self.hello_facts, self.hello = b"", None, None
            conn.sni, conn.client_random = hello.sni, hello.client_random
            if (
                kind is HandshakeFailure.OTHER
                and hello.kind is HelloKind.TLS
                and hello.max_version
                and hello.max_version < TLS1_2
            ):
                kind = HandshakeFailure.UNSUPPORTED_VERSION
        self.relay.stats.handshake_failed(conn.listener, conn.direction, kind.value)
        level = logging.DEBUG if kind is HandshakeFailure.PEER_CLOSED else logging.INFO
        log.log(
            level,
            "conn %d %s %s:%d: TLS handshake failed: %s (%s)",
            conn.id,
            conn.direction,
            conn.remote[0],
            conn.remote[1],
            kind.value,
            message,
            extra={**conn_fields(conn), "reason": kind.value},
        )
        self.relay.observer.handshake_failed(conn, kind, message)
        self.close(CloseReason.HANDSHAKE_FAILED, kind.value)

    def _handshake_timed_out(self) -> None:
        self.handshake_timer = None
        if self.conn.state == "handshake" and not self.closed:
            self._handshake_failed(
                HandshakeFailure.HANDSHAKE_TIMEOUT,
                f"no complete handshake within {self.relay.config.tls_handshake_timeout} ms",
            )

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> None:
        started = time.perf_counter()
        obj = self.obj
        assert obj is not None
        # the C object behind ssl.SSLObject: one Python frame less per record
        read = obj._sslobj.read  # type: ignore[attr-defined]
        incoming = self.incoming
        feed = self.framer.feed
        out: list[bytes] = []
        nmsgs = 0
        counts = self.in_counts
        # what OpenSSL had to send before this read (TLS 1.3 session tickets wait for the
        # first response); anything it adds while reading goes out at once
        queued = self.outgoing.pending
        pings = 0
        keepalives = 0
        sip = False  # application data arrived (SIP, or part of it)
        # stop when OpenSSL has consumed every raw byte: reading on would only raise
        # SSLWantReadError, which costs more than the check
        while incoming.pending:
            try:
                chunk = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as e:
                self._deliver(out, nmsgs)
                self.close(CloseReason.READ_ERROR, classify(e)[1])
                return
            if not chunk:
                self._deliver(out, nmsgs)
                self.close(CloseReason.EOF, "close_notify received")
                return
            sip = True
            for ev in feed(chunk):
                cls = ev.__class__
                if cls is Message:
                    data = ev.data  # type: ignore[union-attr]
                    out.append(data)
                    nmsgs += 1
                    label = message_label(data)
                    counts[label] += 1
                    if label == "REGISTER" and self.server_side:
                        if self.registrations is None:
                            self.registrations = RegistrationTracker()
                        self.registrations.request(data, self.relay.loop.time())
                elif cls is Ping:
                    pings += 1
                elif cls is KeepAlive:
                    out.append(ev.data)  # type: ignore[union-attr]
                    keepalives += 1
                    self.relay.stats.keepalives["crlf_relayed"] += 1
                elif cls is Dropped:
                    keepalives += 1
                    self.relay.stats.keepalives["crlf_dropped"] += 1
                else:
                    assert isinstance(ev, FramingError)
                    self._deliver(out, nmsgs)
                    self._framing_error(ev)
                    return
        now = self.relay.loop.time()
        if pings or keepalives:
            # (a client's; a peer's keep-alives answer those of the local SIP server, which
            # shares the pooled connection between its workers: not limited)
            if self.server_side and not self._keepalives_allowed(pings + keepalives, now):
                self._deliver(out, nmsgs)
                rate = self.relay.config.tls_keepalive_rate
                self.close(
                    CloseReason.KEEPALIVE_FLOOD,
                    f"over {rate:g} keep-alives a second (tls_keepalive_rate)",
                )
                return
            if pings:
                # the pongs for the pings read together leave in one record; one CRLF goes on,
                # so the backend's connection does not idle out while the client only sends
                # keep-alives
                self.relay.stats.keepalives["ping"] += pings
                obj.write(PONG * pings)
                out.append(PONG)
        if self.outgoing.pending > queued:
            # alerts (no_renegotiation), a KeyUpdate answer, pongs: never left waiting in
            # memory for the next SIP message
            self._flush()
        ended = self.records_in - self.records_seen
        self.records_seen = self.records_in
        if sip or pings or keepalives:
            # only SIP and keep-alives count as traffic for tcp_connection_lifetime
            self.last_activity = now
            self.non_sip_records = 0
        elif ended:
            self.non_sip_records += ended
            limit = self.relay.config.tls_max_non_sip_records
            if self.non_sip_records >= limit:
                self._deliver(out, nmsgs)
                self.close(
                    CloseReason.NON_SIP_RECORDS,
                    f"{self.non_sip_records} TLS records in a row without SIP "
                    "(tls_max_non_sip_records)",
                )
                return
        # an incomplete TLS record counts as a partial message too (a slow-loris that drips
        # one record byte by byte never reaches the framer). What is incomplete after a read
        # that completed a message, or a record with no message pending, started in this read:
        # its clock starts now (a client streaming whole records is not a slow-loris)
        partial = bool(self.rec_left or self.rec_head or self.framer.buffered)
        if partial and (nmsgs or pings or keepalives or (ended and not self.framer.buffered)):
            self.partial_since = now
        else:
            self.note_partial(partial)
        if out:
            self._deliver(out, nmsgs, started)

    def _keepalives_allowed(self, n: int, now: float) -> bool:
        """Take `n` keep-alives from this connection's budget; False when it is overdrawn."""
        rate = self.relay.config.tls_keepalive_rate
        if not rate:
            return True
        tokens = min(keepalive_burst(rate), self.ka_tokens + (now - self.ka_time) * rate)
        self.ka_time = now
        self.ka_tokens = tokens - n
        return self.ka_tokens >= 0

    def _deliver(self, out: list[bytes], nmsgs: int, started: float = 0.0) -> None:
        if not out:
            return
        conn = self.conn
        size = sum(map(len, out))
        conn.bytes_in += size
        conn.msgs_in += nmsgs
        if self.tracer is not None:
            self.tracer.messages(out, True, time.time())
        partner = self.partner
        if partner is not None and not self.pending:
            partner.send(out, nmsgs)
            if started:
                self.relay.stats.relay_seconds.sample(started)
        else:
            self._queue(out, nmsgs)

    def _queue(self, chunks: list[bytes], nmsgs: int) -> None:
        """Hold messages until the partner (or this leg's handshake) is ready; bounded."""
        self.pending.extend(chunks)
        self.pending_msgs += nmsgs
        self.pending_size += sum(map(len, chunks))
        self.update_reading()

    def flush_pending(self) -> None:
        """Hand queued messages to the partner once it is ready."""
        if not self.pending or self.partner is None:
            return
        chunks, nmsgs = self.pending, self.pending_msgs
        self.pending, self.pending_msgs, self.pending_size = [], 0, 0
        self.partner.send(chunks, nmsgs)
        self.update_reading()

    def _queue_out(self, chunks: list[bytes], nmsgs: int) -> None:
        """Hold the partner's messages until this leg's handshake completes; bounded."""
        self.outq.extend(chunks)
        self.outq_msgs += nmsgs
        self.outq_size += sum(map(len, chunks))
        if self.partner is not None:
            self.partner.update_reading()

    def flush_outq(self) -> None:
        """Send what the partner queued here while this leg's handshake ran."""
        if self.outq and self.conn.state == "open":
            chunks, nmsgs = self.outq, self.outq_msgs
            self.outq, self.outq_msgs, self.outq_size = [], 0, 0
            self.send(chunks, nmsgs)
            if self.partner is not None:
                self.partner.update_reading()
        if self.close_after_flush is not None:
            self.close(*self.close_after_flush)

    def backlog_in(self) -> bool:
        return self.pending_size > self.relay.config.conn_buffer_limit

    def backlog_out(self) -> bool:
        return self.outq_size > self.relay.config.conn_buffer_limit

    def _framing_error(self, ev: FramingError) -> None:
        self.relay.stats.framing_errors[ev.kind.value] += 1
        self.close(CloseReason.FRAMING_ERROR, f"{ev.kind.value}: {ev.detail}")

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and self.live:
            self.transport.write(data)

    # -- hooks for the roles -------------------------------------------------------------------

    #: stats direction labels, set by the roles
    relay_direction_in = "from_client"
    relay_direction_out = "to_client"

    def on_ready(self) -> None:
        """The handshake completed: start relaying."""

    def local_cert(self) -> CertInfo | None:
        """The certificate this side presented."""
        return None

    def backend_addresses(self) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """(local, remote) of the plain backend connection, when this leg has one."""
        return None

    # -- closing -------------------------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str = "", abort: bool = False) -> None:
        """End this connection: send close_notify, flush, close (or abort, when the peer does
        not read); then end the partner."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        was_open = conn.state == "open"
        conn.state = "closed"
        conn.close_reason = reason
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        # messages read before the close wait for a partner that is still connecting: it
        # delivers them (see InboundTls), so they are not dropped yet
        lost = self.outq_msgs + (0 if self.partner_pending else self.pending_msgs)
        if lost:
            self.relay.stats.dropped_messages[reason.label] += lost
        if self.live and not abort and was_open and self.obj is not None:
            # SSLWantReadError: our close_notify is out, theirs need not come
            with contextlib.suppress(ssl.SSLError):
                self.obj.unwrap()
            self._flush()
        self.shut_transport(reason, abort)
        self.relay.stats.closed[conn.listener, reason.label] += 1
        level = logging.DEBUG if reason in _QUIET_REASONS else logging.INFO
        if reason is CloseReason.FRAMING_ERROR:
            level = logging.WARNING
        if reason is not CloseReason.HANDSHAKE_FAILED:  # that one was logged with its cause
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
        self.relay.connection_closed(self)
        self.relay.observer.closed(conn, reason, self.tracer)
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner_closed(self._reason_for_partner(reason), detail)
        self.on_closed(reason)

    def _reason_for_partner(self, reason: CloseReason) -> CloseReason:
        """What the other leg reports when this one ends."""
        if self.server_side:
            return reason
        # a backend or peer we connected to went away, or could not be reached over TLS
        if reason is CloseReason.HANDSHAKE_FAILED:
            return CloseReason.BACKEND_UNREACHABLE
        if reason in (CloseReason.EOF, CloseReason.READ_ERROR):
            return CloseReason.BACKEND_GONE
        return reason

    def on_closed(self, reason: CloseReason) -> None:
        """Role-specific clean-up."""

    def check_timeouts(self, now: float) -> None:
        if self.conn.state == "open":  # a handshake has its own timer
            super().check_timeouts(now)

    def overdue(self, now: float) -> tuple[CloseReason, str] | None:
        due = super().overdue(now)
        cfg = self.relay.config
        if due is None and now - self.last_activity > cfg.tcp_connection_lifetime:
            reg = self.registrations
            if reg is not None and now < reg.until + cfg.registration_margin:
                return None  # the SIP server still routes calls to this phone over it
            return CloseReason.IDLE_TIMEOUT, ""
        return due

    def _note_registration(self, reg: RegistrationTracker) -> None:
        """Show the registration's expiry on the connection (wall clock, for the API)."""
        until = reg.until
        self.conn.registered_until = (
            time.time() + (until - self.relay.loop.time()) if until else None
        )
