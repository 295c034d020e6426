"""Tracing glue: decides per connection whether it is traced, builds its HEP templates once,
and per message does one encode and one enqueue per destination."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hep.codec import PacketTemplate
from hep.sender import HepIdentity, HepSender
from tlstrace.config import Config
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.hooks import MessageTracer
from tlstrace.sip.peek import call_id
from tlstrace.tls.failures import HandshakeFailure
from tlstrace.trace import events
from tlstrace.trace.filters import Facts, TraceFilter, normalize_ip
from tlstrace.trace.keyfile import KeyLogFile

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay

log = logging.getLogger("tlstrace.trace")

PROTO_SIP = 1
PROTO_NET = 89  # OpenSIPS's "net" type for transport events
PROTO_LOG = 100
#: Call-IDs remembered per connection for the once-per-call session record
SEEN_CALL_IDS = 1024

#: messages kept for the backend leg's trace while it connects (a safety bound: backend_leg()
#: ends the wait, with or without a plain leg to trace)
EARLY_MAX = 256

Addr = tuple[str, int]


def _hep_ip(host: str, other: str) -> str:
    """An IP for a HEP address chunk: unknown or unresolved addresses become 0.0.0.0 / ::."""
    addr = normalize_ip(host)
    if addr is None:
        return "::" if ":" in other else "0.0.0.0"
    return str(addr)


@dataclass(frozen=True)
class SwitchedBy:
    """Who switched tracing, for the log line that records it: `kind` is api, signal, file or
    flag, `text` how the line says it, `client` the API client's HOST:PORT."""

    kind: Literal["api", "signal", "file", "flag"]
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
        self.senders = senders
        self.keyfile: KeyLogFile | None = None
        self.config: Config = config
        self.apply_config(config)
        self.enabled = config.trace_on and bool(senders)
        self.packets = 0
        self.too_big = 0

    def apply_config(self, config: Config) -> None:
        session_changed = (self.config.trace_keys, self.config.trace_sessions) != \
            (config.trace_keys, config.trace_sessions)
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
        if session_changed and self.relay is not None:
            # the session records of open connections follow the new settings at once
            for leg in list(self.relay.tls_legs.values()):
                if isinstance(leg.tracer, ConnectionTracer):
                    leg.tracer.build_session()

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
            log.info("tracing switched %s by %s", "on" if on else "off", by.text,
                     extra=by.log_fields(on))

    def set_filter(self, rules: TraceFilter) -> None:
        """New rules; they decide for connections whose handshake ends from now on."""
        self.filter = rules

    def _facts(self, conn: Connection) -> Facts:
        return Facts(conn.direction, conn.remote[0], conn.remote[1], conn.local[0],
                     conn.local[1], conn.sni)

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
        tracer = self._tracer_for(conn)
        if tracer is None:
            return None
        self.send_event(conn, events.handshake_event(
            conn, ok=True, message="", reason=None, keys=self.config.trace_keys))
        return tracer

    def handshake_failed(self, conn: Connection, reason: HandshakeFailure, message: str) -> None:
        if self.keyfile is not None:
            self.keyfile.write(conn.keylog)
        if not self._wanted(conn):
            return
        conn.traced = True  # so that its CLOSED follows: never half-traced
        self.send_event(conn, events.handshake_event(
            conn, ok=False, message=message, reason=reason.value, keys=self.config.trace_keys))

    def closed(self, conn: Connection, reason: CloseReason, traced: MessageTracer | None) -> None:
        if self.enabled and conn.traced:
            self.send_event(conn, events.closed_event(reason.value))

    # -- sending -------------------------------------------------------------------------------

    def template(self, src: Addr, dst: Addr, proto_type: int) -> PacketTemplate:
        return self.identity.template(
            src_ip=_hep_ip(src[0], dst[0]), dst_ip=_hep_ip(dst[0], src[0]),
            src_port=src[1], dst_port=dst[1], ip_proto=self.config.trace_ip_proto,
            proto_type=proto_type,
        )

    def send_event(self, conn: Connection, parts: list[tuple[str, str]]) -> None:
        payload = events.render(parts, self.config.trace_event_format, self.config.homer5_delim)
        # OpenSIPS's transport events carry the remote peer as source, the local socket as
        # destination, whatever the direction
        tpl = self.template(conn.remote, conn.local, PROTO_NET)
        now = time.time()
        sec = int(now)
        self.send(tpl, sec, int((now - sec) * 1e6), payload, str(conn.id).encode())

    def send(self, tpl: PacketTemplate, sec: int, usec: int, payload: bytes,
             cid: bytes | None) -> None:
        try:
            packet = tpl.encode(sec, usec, payload, cid)
        except ValueError:
            self.too_big += 1
            return
        self.packets += 1
        for sender in self.senders:
            sender.send(packet)


class ConnectionTracer:
    """Traces one connection's SIP messages and per-call session records."""

    __slots__ = ("backend_in", "backend_out", "conn", "early", "manager", "seen", "session",
                 "tpl_in", "tpl_out")

    def __init__(self, manager: TraceManager, conn: Connection) -> None:
        self.manager = manager
        self.conn = conn
        # packets read from the peer go remote -> local; packets written go local -> remote
        self.tpl_in = manager.template(conn.remote, conn.local, PROTO_SIP)
        self.tpl_out = self.tpl_in.swapped()
        self.backend_in: PacketTemplate | None = None
        self.backend_out: PacketTemplate | None = None
        cfg = manager.config
        # messages read before the backend leg was up, traced on that leg once it is
        self.early: list[tuple[int, int, bytes, bytes | None]] | None = \
            [] if cfg.trace_backend and conn.direction == "inbound" else None
        #: the session record's per-connection prefix and its template (trace_sessions)
        self.session: tuple[str, PacketTemplate] | None = None
        self.build_session()
        self.seen: OrderedDict[bytes, None] = OrderedDict()

    def build_session(self) -> None:
        """The per-connection part of the session record (keys in it only when asked)."""
        cfg, conn = self.manager.config, self.conn
        self.session = (
            events.session_record_prefix(conn, keys=cfg.trace_keys),
            self.manager.template(conn.remote, conn.local, PROTO_LOG),
        ) if cfg.trace_sessions else None

    def backend_leg(self, addresses: tuple[Addr, Addr] | None) -> None:
        """The backend connection is up (its plain leg is traced with trace_backend)."""
        if self.early is not None and addresses is not None:
            self.backend_out = self.manager.template(*addresses, PROTO_SIP)
            self.backend_in = self.backend_out.swapped()
            for sec, usec, data, cid in self.early:
                self.manager.send(self.backend_out, sec, usec, data, cid)
        self.early = None

    def message(self, data: bytes, received: bool, timestamp: float) -> None:
        manager = self.manager
        cid = call_id(data)
        sec = int(timestamp)
        usec = int((timestamp - sec) * 1e6)
        if received:
            manager.send(self.tpl_in, sec, usec, data, cid)
            if self.backend_out is not None:
                manager.send(self.backend_out, sec, usec, data, cid)
            elif self.early is not None and len(self.early) < EARLY_MAX:
                self.early.append((sec, usec, data, cid))
        else:
            if self.backend_in is not None:
                manager.send(self.backend_in, sec, usec, data, cid)
            manager.send(self.tpl_out, sec, usec, data, cid)
        session = self.session
        if cid is not None and session is not None and cid not in self.seen:
            self.seen[cid] = None
            if len(self.seen) > SEEN_CALL_IDS:
                self.seen.popitem(last=False)
            manager.send(session[1], sec, usec, events.session_record(session[0], cid), cid)
