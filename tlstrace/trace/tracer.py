"""Tracing glue: decides per connection whether it is traced, builds its HEP templates once,
and per read or write builds the packets of its messages in one call (`fastpath`, in C when
built) and hands them to each destination in one call.

Every relayed message leaves a trace: a message whose packet would exceed `hep_max_packet` is
traced truncated (`fit.truncate_sip`) with a type-100 record saying so, and a Call-ID longer
than `fit.CALL_ID_MAX` goes into the packets shortened (`fit.short_id`). A message pays two
length comparisons for this (its size, its Call-ID's) unless it is that large or its Call-ID
that long, and one substring test so that a client cannot fake the truncation mark
(`fit.unmark`)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hep.address import join_host_port
from hep.codec import MAX_PACKET, PacketTemplate, timestamp_chunks
from hep.sender import HepIdentity, HepSender
from tlstrace.config import Config
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.hooks import MessageTracer
from tlstrace.sip.framing import WHITESPACE
from tlstrace.sip.peek import call_id
from tlstrace.tls.failures import HandshakeFailure
from tlstrace.trace import events
from tlstrace.trace.fastpath import Parts, Session
from tlstrace.trace.filters import Facts, TraceFilter, normalize_ip
from tlstrace.trace.fit import CALL_ID_MAX, MARK, short_id, truncate_sip, unmark
from tlstrace.trace.keyfile import KeyLogFile

try:  # the fast path in C (setup.py builds it beside the mypyc modules; see _fastpath.c)
    from tlstrace.trace._fastpath import encode_batch
except ImportError:  # not built: the same in Python
    from tlstrace.trace.fastpath import encode_batch

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay

log = logging.getLogger("tlstrace.trace")

PROTO_SIP = 1
PROTO_NET = 89  # OpenSIPS's "net" type for transport events
PROTO_LOG = 100
#: Call-IDs remembered per connection for the once-per-call session record. Each is kept as
#: its 64-bit hash (an int in an ordered dict: about 100 bytes), whatever the Call-ID's length:
#: at most about 100 KiB per connection
SEEN_CALL_IDS = 1024

#: messages kept for the backend leg's trace while it connects (a safety bound: backend_leg()
#: ends the wait, with or without a plain leg to trace), by count and by bytes
EARLY_MAX = 256
EARLY_MAX_BYTES = 256 * 1024

#: Reasons of tlstrace_trace_oversize_total: a message traced with its body cut, with header
#: lines left out, a Call-ID shortened in the packets, a packet that could not be built at all
OVERSIZE_REASONS = ("truncated_body", "truncated_headers", "long_call_id", "not_traced")
#: At most LOG_BURST oversize lines per LOG_INTERVAL seconds (the counter counts them all)
LOG_BURST = 5
LOG_INTERVAL = 10.0

Addr = tuple[str, int]


def _hep_ip(host: str, other: str) -> str:
    """An IP for a HEP address chunk: unknown or unresolved addresses become 0.0.0.0 / ::."""
    addr = normalize_ip(host)
    if addr is None:
        return "::" if ":" in other else "0.0.0.0"
    return str(addr)


@dataclass(frozen=True)
class SwitchedBy:
    """Who switched tracing, for the log line that records it: `kind` is api, signal, file,
    flag or limit (a time limit ran out), `text` how the line says it, `client` the API
    client's HOST:PORT."""

    kind: Literal["api", "signal", "file", "flag", "limit"]
    text: str
    client: str | None = None

    def log_fields(self, on: bool) -> dict[str, str]:
        fields = {"tracing": "on" if on else "off", "switched_by": self.kind}
        if self.client is not None:
            fields["client"] = self.client
        return fields


class TraceManager:
    """The relay's ConnectionObserver when tracing is configured."""

    def __init__(self, config: Config, senders: list[HepSender], relay: Relay | None = None):
        self.relay = relay
        self._senders: list[HepSender] = []
        #: each sender's `send`, for the per-message path
        self.sends: tuple[Callable[[bytes], bool], ...] = ()
        #: each sender's `send_packets` (a batch's packets, in order, in one call)
        self.send_batches: tuple[Callable[[list[bytes]], None], ...] = ()
        self.senders = senders
        self.keyfile: KeyLogFile | None = None
        self.config: Config = config
        self.apply_config(config)
        self.enabled = config.trace_on and bool(senders)
        self.packets = 0
        #: messages or packets that did not fit as they were, by reason (OVERSIZE_REASONS)
        self.oversize = dict.fromkeys(OVERSIZE_REASONS, 0)
        self._log_since = -LOG_INTERVAL
        self._log_lines = 0
        self._log_suppressed = 0

    @property
    def senders(self) -> list[HepSender]:
        return self._senders

    @senders.setter
    def senders(self, senders: list[HepSender]) -> None:
        self._senders = list(senders)
        self.sends = tuple(s.send for s in self._senders)
        self.send_batches = tuple(s.send_packets for s in self._senders)

    def apply_config(self, config: Config) -> None:
        session_changed = (self.config.trace_keys, self.config.trace_sessions) != (
            config.trace_keys,
            config.trace_sessions,
        )
        size_changed = self.config.hep_max_packet != config.hep_max_packet
        self.max_packet = config.hep_max_packet
        self.config = config
        self.filter = TraceFilter(config.trace_filter, config.trace_filter_default)
        if config.keylog_file is not None:
            if self.keyfile is None or self.keyfile.path != config.keylog_file:
                if self.keyfile is not None:
                    self.keyfile.close()
                self.keyfile = KeyLogFile(config.keylog_file)
        elif self.keyfile is not None:
            self.keyfile.close()
            self.keyfile = None
        self.identity = HepIdentity(
            config.hep_capture_id,
            config.hep_auth_key.encode() if config.hep_auth_key else None,
            config.hep_node_name.encode() if config.hep_node_name else None,
        )
        if (session_changed or size_changed) and self.relay is not None:
            # open connections follow the new settings at once
            for leg in list(self.relay.tls_legs.values()):
                if isinstance(leg.tracer, ConnectionTracer):
                    leg.tracer.build_session()
                    leg.tracer.set_room()

    # -- switching -----------------------------------------------------------------------------

    def set_enabled(self, on: bool, by: SwitchedBy | None = None) -> None:
        """On: connections already open are traced from now on (their handshake event is
        past). Off: nothing more is sent, for any connection. `by` goes in the log line."""
        if on == self.enabled:
            return
        self.enabled = on
        relay = self.relay
        if relay is None:
            return
        for leg in list(relay.tls_legs.values()):
            if leg.closed or leg.conn.state != "open":
                continue
            if on:
                leg.tracer = self._tracer_for(leg.conn)
                if leg.tracer is not None:
                    leg.tracer.backend_leg(leg.backend_addresses())
            else:
                leg.tracer = None
            leg.conn.traced = leg.tracer is not None
        if by is None:
            log.info("tracing switched %s", "on" if on else "off")
        else:
            log.info(
                "tracing switched %s by %s", "on" if on else "off", by.text, extra=by.log_fields(on)
            )

    def set_filter(self, rules: TraceFilter) -> None:
        """New rules; they decide for connections whose handshake ends from now on."""
        self.filter = rules

    def _facts(self, conn: Connection) -> Facts:
        return Facts(
            conn.direction, conn.remote[0], conn.remote[1], conn.local[0], conn.local[1], conn.sni
        )

    def _wanted(self, conn: Connection) -> bool:
        return self.enabled and self.filter.allows(self._facts(conn))

    def _tracer_for(self, conn: Connection) -> ConnectionTracer | None:
        if not self._wanted(conn):
            return None
        return ConnectionTracer(self, conn)

    # -- ConnectionObserver --------------------------------------------------------------------

    def handshake_done(self, conn: Connection) -> MessageTracer | None:
        if self.keyfile is not None:
            self.keyfile.write(conn.keylog)
        if not self.enabled:
            return None  # (what _tracer_for says then, two calls fewer per connection)
        tracer = self._tracer_for(conn)
        if tracer is None:
            return None
        self.send_event(
            conn,
            events.handshake_event(
                conn, ok=True, message="", reason=None, keys=self.config.trace_keys
            ),
        )
        return tracer

    def handshake_failed(self, conn: Connection, reason: HandshakeFailure, message: str) -> None:
        if self.keyfile is not None:
            self.keyfile.write(conn.keylog)
        if not self._wanted(conn):
            return
        conn.traced = True  # so that its CLOSED follows: never half-traced
        self.send_event(
            conn,
            events.handshake_event(
                conn, ok=False, message=message, reason=reason.value, keys=self.config.trace_keys
            ),
        )

    def closed(self, conn: Connection, reason: CloseReason, traced: MessageTracer | None) -> None:
        if self.enabled and conn.traced:
            self.send_event(conn, events.closed_event(reason.value, events.protocol(conn)))

    # -- sending -------------------------------------------------------------------------------

    def template(
        self, src: Addr, dst: Addr, proto_type: int, ip_proto: int | None = None
    ) -> PacketTemplate:
        return self.identity.template(
            src_ip=_hep_ip(src[0], dst[0]),
            dst_ip=_hep_ip(dst[0], src[0]),
            src_port=src[1],
            dst_port=dst[1],
            ip_proto=self.config.trace_ip_proto if ip_proto is None else ip_proto,
            proto_type=proto_type,
        )

    def ip_proto(self, conn: Connection) -> int:
        """The IP protocol chunk of a connection's packets (trace_ws_ip_proto for WebSocket)."""
        if conn.transport == "tls":
            return self.config.trace_ip_proto
        return self.config.trace_ws_ip_proto

    def send_event(self, conn: Connection, parts: list[tuple[str, str]]) -> None:
        payload = events.render(parts, self.config.trace_event_format, self.config.homer5_delim)
        # OpenSIPS's transport events carry the remote peer as source, the local socket as
        # destination, whatever the direction
        tpl = self.template(conn.remote, conn.local, PROTO_NET, self.ip_proto(conn))
        now = time.time()
        sec = int(now)
        self.send_checked(tpl, sec, int((now - sec) * 1e6), payload, str(conn.id).encode(), conn)

    def send(
        self, tpl: PacketTemplate, sec: int, usec: int, payload: bytes, cid: bytes | None
    ) -> None:
        """A SIP message's packet: `ConnectionTracer.message` made it fit."""
        try:
            packet = tpl.encode(sec, usec, payload, cid)
        except ValueError as e:  # a safety net: not expected
            self._not_sent(tpl, e, None)
            return
        self.packets += 1
        for send in self.sends:
            send(packet)

    def send_checked(
        self,
        tpl: PacketTemplate,
        sec: int,
        usec: int,
        payload: bytes,
        cid: bytes | None,
        conn: Connection,
    ) -> None:
        """An event or record's packet (once per connection, call or truncated message):
        its fields are bounded, and what still does not fit `hep_max_packet` is not sent."""
        try:
            packet = tpl.encode(sec, usec, payload, cid)
            if len(packet) > self.max_packet:
                raise ValueError(f"{len(packet)} bytes, hep_max_packet is {self.max_packet}")
        except ValueError as e:
            self._not_sent(tpl, e, conn)
            return
        self.packets += 1
        for send in self.sends:
            send(packet)

    def _not_sent(self, tpl: PacketTemplate, error: ValueError, conn: Connection | None) -> None:
        self.oversize["not_traced"] += 1
        suppressed = self.may_log()
        if suppressed is not None:
            who = (
                f"conn {conn.id} {conn.direction} {join_host_port(*conn.remote)}: "
                if conn is not None
                else ""
            )
            log.warning(
                "%sa HEP packet of type %d was not sent: %s%s",
                who,
                tpl.packet.proto_type,
                error,
                _suppressed(suppressed),
            )

    def may_log(self) -> int | None:
        """None when this oversize line must not be logged (more than LOG_BURST in the
        current LOG_INTERVAL); otherwise how many were left out since the last one logged."""
        now = time.monotonic()
        if now - self._log_since >= LOG_INTERVAL:
            self._log_since = now
            self._log_lines = 0
        if self._log_lines >= LOG_BURST:
            self._log_suppressed += 1
            return None
        self._log_lines += 1
        suppressed, self._log_suppressed = self._log_suppressed, 0
        return suppressed


def _suppressed(n: int) -> str:
    return f" ({n} similar lines not logged before this one)" if n else ""


class ConnectionTracer:
    """Traces one connection's SIP messages and per-call session records."""

    __slots__ = (
        "backend_in",
        "backend_out",
        "conn",
        "early",
        "early_size",
        "fast_in",
        "fast_out",
        "fast_session",
        "fixed",
        "manager",
        "room",
        "seen",
        "session",
        "tpl_in",
        "tpl_out",
    )

    def __init__(self, manager: TraceManager, conn: Connection) -> None:
        self.manager = manager
        self.conn = conn
        # packets read from the peer go remote -> local; packets written go local -> remote
        self.tpl_in = manager.template(conn.remote, conn.local, PROTO_SIP, manager.ip_proto(conn))
        self.tpl_out = self.tpl_in.swapped()
        self.backend_in: PacketTemplate | None = None
        self.backend_out: PacketTemplate | None = None
        cfg = manager.config
        # messages read before the backend leg was up, traced on that leg once it is (with
        # the message as it was read when the traced copy is a truncated one)
        self.early: list[tuple[int, int, bytes, bytes | None, bytes | None]] | None = (
            [] if cfg.trace_backend and conn.direction == "inbound" else None
        )
        self.early_size = 0
        #: the session record's per-connection prefix, its template and its bytes before a
        #: Call-ID (trace_sessions)
        self.session: tuple[str, PacketTemplate, bytes] | None = None
        #: the same for `encode_batch`: (record head, template parts)
        self.fast_session: Session | None = None
        self.build_session()
        #: hashes of the Call-IDs whose session record went out, oldest first
        self.seen: OrderedDict[int, None] = OrderedDict()
        #: bytes of the SIP packets of this connection besides payload and correlation id
        self.fixed = 0
        #: the largest message that fits whatever its Call-ID: one comparison per message
        self.room = 0
        self.set_room()

    def set_room(self) -> None:
        templates = [self.tpl_in, self.tpl_out, self.backend_in, self.backend_out]
        self.fixed = max(MAX_PACKET - t.max_payload() for t in templates if t is not None)
        self.room = self.manager.max_packet - self.fixed - 6 - CALL_ID_MAX
        # `encode_batch`'s templates for what is read and what is written: (first, second,
        # second first)
        bin_, bout = self.backend_in, self.backend_out
        self.fast_in: tuple[Parts, Parts | None, bool] = (
            self.tpl_in.parts,
            None if bout is None else bout.parts,
            False,
        )
        self.fast_out: tuple[Parts, Parts | None, bool] = (
            self.tpl_out.parts,
            None if bin_ is None else bin_.parts,
            True,
        )

    def build_session(self) -> None:
        """The per-connection part of the session record (keys in it only when asked)."""
        cfg, conn = self.manager.config, self.conn
        if cfg.trace_sessions:
            prefix = events.session_record_prefix(conn, keys=cfg.trace_keys)
            self.session = (
                prefix,
                self.manager.template(
                    conn.remote, conn.local, PROTO_LOG, self.manager.ip_proto(conn)
                ),
                events.session_record_head(prefix),
            )
            self.fast_session = (self.session[2], self.session[1].parts)
        else:
            self.session = None
            self.fast_session = None

    def backend_leg(self, addresses: tuple[Addr, Addr] | None) -> None:
        """The backend connection is up (its plain leg is traced with trace_backend)."""
        if self.early is not None and addresses is not None:
            self.backend_out = self.manager.template(*addresses, PROTO_SIP)
            self.backend_in = self.backend_out.swapped()
            self.set_room()
            for sec, usec, data, cid, original in self.early:
                room = self.manager.max_packet - self.fixed - (0 if cid is None else 6 + len(cid))
                if len(data) > room:  # the backend leg's packets are larger (IPv6)
                    data = truncate_sip(original or data, room, cid)[0]
                self.manager.send(self.backend_out, sec, usec, data, cid)
        self.early = None
        self.early_size = 0

    def messages(self, chunks: list[bytes], received: bool, timestamp: float) -> None:
        """A batch read or written together (keep-alives, whitespace first, are skipped).

        The fast path, for messages that fit as they are: the timestamp chunks are packed once
        for the batch, and `encode_batch` (in C when built: `fastpath`) builds the packets of
        the messages one after the other (per message, a Call-ID peek and one packet per
        template; per new call, its session record), which go to each destination in one
        call (`send_packets`). The first message it does not take (a message too large or
        with a Call-ID too long, a client's forged truncation mark, a new Call-ID whose record
        needs JSON escaping or is too large, a message kept for the backend leg) takes
        `_one`, in Python, after the packets before it are sent; then the fast path goes on."""
        manager = self.manager
        if received:
            first, fast = self.tpl_in, self.fast_in
        else:
            first, fast = self.tpl_out, self.fast_out
        try:
            sec = int(timestamp)
            ts = timestamp_chunks(sec, int((timestamp - sec) * 1e6))
            if received and self.early is not None:  # kept for the backend leg: `message`
                for data in chunks:
                    if data[0] not in WHITESPACE:
                        self.message(data, received, timestamp)
                return
            n = len(chunks)
            out: list[bytes] = []
            i = 0
            while True:
                i = encode_batch(
                    chunks,
                    i,
                    ts,
                    fast[0],
                    fast[1],
                    fast[2],
                    self.room,
                    self.fast_session,
                    self.seen,
                    SEEN_CALL_IDS,
                    manager.max_packet,
                    out,
                )
                if out:
                    manager.packets += len(out)
                    for send_packets in manager.send_batches:
                        send_packets(out)
                    out = []
                if i >= n:
                    return
                self._one(chunks[i], received, timestamp, ts)
                i += 1
        except ValueError as e:  # a safety net: not expected (a clock past 2106)
            manager._not_sent(first, e, self.conn)

    def _one(self, data: bytes, received: bool, timestamp: float, ts: bytes) -> None:
        """A message of `messages` that the fast path did not take (ValueError: see there);
        never a keep-alive (the fast path skips them)."""
        manager = self.manager
        cid = call_id(data)
        if (
            len(data) > self.room
            or data.find(MARK) >= 0
            or (cid is not None and len(cid) > CALL_ID_MAX)
        ):
            self.message(data, received, timestamp)
            return
        # the order of the packets: the client's leg, then the backend's, as relayed
        tpls: tuple[PacketTemplate | None, PacketTemplate | None] = (
            (self.tpl_in, self.backend_out) if received else (self.backend_in, self.tpl_out)
        )
        for tpl in tpls:
            if tpl is not None:
                packet = tpl.encode_at(ts, data, cid)
                manager.packets += 1
                for send in manager.sends:
                    send(packet)
        session = self.session
        if cid is not None and session is not None and (key := hash(cid)) not in self.seen:
            self.seen[key] = None
            if len(self.seen) > SEEN_CALL_IDS:
                self.seen.popitem(last=False)
            record = events.session_record_at(session[2], session[0], cid)
            packet = session[1].encode_at(ts, record, cid)
            if len(packet) > manager.max_packet:
                sec = int(timestamp)
                manager.send_checked(
                    session[1], sec, int((timestamp - sec) * 1e6), record, cid, self.conn
                )
            else:
                manager.packets += 1
                for send in manager.sends:
                    send(packet)

    def message(self, data: bytes, received: bool, timestamp: float) -> None:
        manager = self.manager
        cid = call_id(data)
        sec = int(timestamp)
        usec = int((timestamp - sec) * 1e6)
        original: bytes | None = None
        cid_length: int | None = None
        # the client's own mark: renamed in the trace, never relayed changed (`find`, not
        # `in`: a bytes `in` tries the operand as an int first, and raises and clears an error)
        if data.find(MARK) >= 0:
            data = unmark(data)
        if len(data) > self.room or (cid is not None and len(cid) > CALL_ID_MAX):
            original = data
            fitted, cid, cid_length = self._fit(data, cid, received, sec, usec)
            if fitted is None:
                return
            data = fitted
        if received:
            manager.send(self.tpl_in, sec, usec, data, cid)
            if self.backend_out is not None:
                manager.send(self.backend_out, sec, usec, data, cid)
            elif self.early is not None and len(self.early) < EARLY_MAX:
                kept = original if original is not data else None
                size = len(data) + (len(kept) if kept is not None else 0)
                if self.early_size + size <= EARLY_MAX_BYTES:
                    self.early.append((sec, usec, data, cid, kept))
                    self.early_size += size
        else:
            if self.backend_in is not None:
                manager.send(self.backend_in, sec, usec, data, cid)
            manager.send(self.tpl_out, sec, usec, data, cid)
        session = self.session
        if cid is not None and session is not None and (key := hash(cid)) not in self.seen:
            self.seen[key] = None
            if len(self.seen) > SEEN_CALL_IDS:
                self.seen.popitem(last=False)
            manager.send_checked(
                session[1],
                sec,
                usec,
                events.session_record_at(session[2], session[0], cid, cid_length),
                cid,
                self.conn,
            )

    def _fit(
        self, data: bytes, cid: bytes | None, received: bool, sec: int, usec: int
    ) -> tuple[bytes | None, bytes | None, int | None]:
        """The slow path of `message`: shorten a long Call-ID, truncate a message too large
        for one packet, count, log (rate-limited) and send the type-100 record about it.
        Returns what to trace: (payload or None, correlation id, real Call-ID length)."""
        manager = self.manager
        cid_length: int | None = None
        if cid is not None and len(cid) > CALL_ID_MAX:
            cid_length = len(cid)
            cid = short_id(cid)
            manager.oversize["long_call_id"] += 1
        room = manager.max_packet - self.fixed - (0 if cid is None else 6 + len(cid))
        length = len(data)
        cut: str | None = None
        traced: bytes | None = data
        if length > room:
            traced, cut = truncate_sip(data, room, cid)
            if len(traced) > room:  # hep_max_packet too small for the template's chunks
                traced, cut = None, "not_traced"
                manager.oversize["not_traced"] += 1
            else:
                manager.oversize[f"truncated_{cut}"] += 1
            conn = self.conn
            record = events.truncated_record(
                conn,
                received=received,
                length=length,
                traced=len(traced) if traced is not None else 0,
                cut=cut,
                max_packet=manager.max_packet,
                call_id=cid,
                call_id_length=cid_length,
            )
            manager.send_checked(
                manager.template(conn.remote, conn.local, PROTO_LOG, manager.ip_proto(conn)),
                sec,
                usec,
                record,
                cid if cid is not None else str(conn.id).encode(),
                conn,
            )
        if traced is data and cid_length is None:
            return data, cid, None  # it fits: near the limit, nothing to say
        suppressed = manager.may_log()
        if suppressed is not None:
            self._log(data, received, traced, cut, cid, cid_length, suppressed)
        return traced, cid, cid_length

    def _log(
        self,
        data: bytes,
        received: bool,
        traced: bytes | None,
        cut: str | None,
        cid: bytes | None,
        cid_length: int | None,
        suppressed: int,
    ) -> None:
        conn = self.conn
        first = data[: data.find(b" ", 0, 32)] if b" " in data[:32] else data[:32]
        what = (
            f"{first.decode('ascii', 'replace')!r} of {len(data)} bytes "
            f"{'received' if received else 'sent'}"
        )
        notes = []
        if cut == "not_traced":
            notes.append(f"not traced: hep_max_packet {self.manager.max_packet} leaves no room")
        elif cut is not None and traced is not None:
            notes.append(
                f"does not fit one HEP packet (hep_max_packet "
                f"{self.manager.max_packet}): traced truncated to {len(traced)} bytes, "
                f"{cut} cut"
            )
        if cid_length is not None and cid is not None:
            notes.append(
                f"Call-ID of {cid_length} bytes traced as its first "
                f"{len(cid) - 33} bytes and ...{cid[-33:].decode('ascii', 'replace')}"
            )
        log.warning(
            "conn %s %s %s: %s: %s%s",
            conn.id,
            conn.direction,
            join_host_port(*conn.remote),
            what,
            "; ".join(notes),
            _suppressed(suppressed),
        )
