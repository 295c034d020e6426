"""Payloads of traced events, sans-IO.

- Connection events (HEP type 89, "net"), as OpenSIPS's proto_tls builds them
  (`openssl_trace.h`, `trans_trace.c`): keys Protocol, client-subject, client-issuer,
  server-subject, server-issuer, master-key, Event, Status, Message, in that order, laid out as
  `cJSON_Print` does (JSON mode) or as the values joined by `homer5_delim` (homer5 mode).
  As in OpenSIPS, `client-*` is the peer's certificate and `server-*` our own, whatever the
  direction. Differences on purpose: `master-key` is hex (OpenSIPS ≥ 1.1 writes raw bytes) and
  only exists for TLS 1.2; `keylog` (the NSS key-log lines) and `Reason` (a stable failure
  reason) follow `Message` when present.
- Per-call TLS session records (HEP type 100, JSON), one per Call-ID, for Homer's Logs tab,
  and a type-100 record for each SIP message traced truncated (`truncated_record`).

Text a peer controls (its certificate's subject and issuer) is shortened past
`fit.FIELD_MAX` characters, and a Call-ID past `fit.CALL_ID_MAX` bytes arrives shortened
(`fit.short_id`), so that no event outgrows a HEP packet.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from hep.address import join_host_port
from tlstrace.relay.connection import Connection
from tlstrace.tls.certinfo import CertInfo
from tlstrace.trace.fit import short_text

Format = Literal["json", "homer5"]

SUCCESS_MESSAGE = {"ACCEPTED": "Connection accepted...", "CONNECTED": "Successfully connected..."}


def render(parts: list[tuple[str, str]], fmt: Format, delim: str = ":") -> bytes:
    if fmt == "homer5":
        return delim.join(v for _, v in parts).encode()
    # cJSON's printed layout, which OpenSIPS sends: a tab before each key and after each colon,
    # non-ASCII as it is (the keys of an event are distinct)
    return json.dumps(
        dict(parts), indent="\t", separators=(",", ":\t"), ensure_ascii=False
    ).encode()


def master_key(keylog: list[str]) -> str | None:
    """The TLS 1.2 master secret (hex) from a CLIENT_RANDOM key-log line."""
    for line in keylog:
        fields = line.split()
        if len(fields) == 3 and fields[0] == "CLIENT_RANDOM":
            return fields[2].lower()
    return None


def _cert_parts(conn: Connection) -> list[tuple[str, str]]:
    parts = []
    peer = conn.peer_cert
    if peer is not None:
        parts += [
            ("client-subject", short_text(peer.subject)),
            ("client-issuer", short_text(peer.issuer)),
        ]
    if conn.local_cert is not None:
        parts += [
            ("server-subject", short_text(conn.local_cert.subject)),
            ("server-issuer", short_text(conn.local_cert.issuer)),
        ]
    return parts


def protocol(conn: Connection) -> str:
    """The `Protocol` of a connection's events: `TLS`, or `WSS` / `WS` as OpenSIPS's proto_wss
    and proto_ws name theirs."""
    return conn.transport.upper()


def handshake_event(
    conn: Connection, *, ok: bool, message: str, reason: str | None, keys: bool
) -> list[tuple[str, str]]:
    event = "ACCEPTED" if conn.direction == "inbound" else "CONNECTED"
    parts = [("Protocol", protocol(conn)), *_cert_parts(conn)]
    mk = master_key(conn.keylog) if keys and conn.keylog else None
    if mk:
        parts.append(("master-key", mk))
    parts += [
        ("Event", event),
        ("Status", "SUCCESS" if ok else "FAILURE"),
        ("Message", SUCCESS_MESSAGE[event] if ok else message),
    ]
    if reason:
        parts.append(("Reason", reason))
    if keys and conn.keylog:
        parts.append(("keylog", "\n".join(conn.keylog)))
    return parts


def closed_event(reason: str, proto: str = "TLS") -> list[tuple[str, str]]:
    # OpenSIPS always reports CLOSED with Status SUCCESS; the reason is the Message
    return [("Protocol", proto), ("Event", "CLOSED"), ("Status", "SUCCESS"), ("Message", reason)]


def _cert_json(info: CertInfo | None) -> dict[str, str] | None:
    if info is None:
        return None
    d = info.as_dict()
    d["subject"], d["issuer"] = short_text(d["subject"]), short_text(d["issuer"])
    return d


def session_record_prefix(conn: Connection, *, keys: bool) -> str:
    """The per-connection part of the type-100 record, as JSON text without its closing brace;
    `session_record` adds the Call-ID. Built once per connection."""
    record: dict[str, Any] = {
        "type": "tls-session",
        "connection_id": str(conn.id),
        "direction": conn.direction,
        "remote": join_host_port(*conn.remote),
        "local": join_host_port(*conn.local),
        "sni": conn.sni,
        "tls_version": conn.tls_version,
        "cipher": conn.cipher,
        "alpn": conn.alpn,
        "resumed": conn.resumed,
        "handshake_ms": round(conn.handshake_ms, 3) if conn.handshake_ms is not None else None,
        "peer_certificate": _cert_json(conn.peer_cert),
        "local_certificate": _cert_json(conn.local_cert),
    }
    if conn.transport != "tls":  # WebSocket: what the Upgrade said
        record["transport"] = conn.transport
        record["ws_path"] = conn.ws_path
        record["origin"] = conn.ws_origin
        record["user_agent"] = conn.user_agent
    if keys:
        record["keylog"] = list(conn.keylog or ())
    return json.dumps(record, separators=(",", ":"))[:-1]


#: A Call-ID that JSON writes as it is (printable ASCII but `"` and `\\`)
_JSON_PLAIN = re.compile(rb"[ !#-\[\]-~]*")


def session_record_head(prefix: str) -> bytes:
    """What `session_record_at` puts before a plain Call-ID: built once per connection."""
    return (prefix + ',"call_id":"').encode()


def session_record_at(
    head: bytes, prefix: str, call_id: bytes, call_id_length: int | None = None
) -> bytes:
    """`session_record(prefix, ...)`, with `head = session_record_head(prefix)`: a plain
    Call-ID (nearly all of them) is joined in as bytes, without a JSON encoder."""
    if call_id_length is None and _JSON_PLAIN.fullmatch(call_id):
        return b"".join((head, call_id, b'"}'))
    return session_record(prefix, call_id, call_id_length)


def session_record(prefix: str, call_id: bytes, call_id_length: int | None = None) -> bytes:
    """The record for one Call-ID; `call_id_length` is the real length of a Call-ID that
    arrives shortened."""
    cid = json.dumps(call_id.decode("utf-8", "replace"))
    if call_id_length is None:
        return f'{prefix},"call_id":{cid}}}'.encode()
    return f'{prefix},"call_id":{cid},"call_id_length":{call_id_length}}}'.encode()


def truncated_record(
    conn: Connection,
    *,
    received: bool,
    length: int,
    traced: int,
    cut: str,
    max_packet: int,
    call_id: bytes | None,
    call_id_length: int | None,
) -> bytes:
    """The type-100 record sent with a SIP message traced truncated."""
    record: dict[str, Any] = {
        "type": "tls-trace-truncated",
        "connection_id": str(conn.id),
        "direction": conn.direction,
        "remote": join_host_port(*conn.remote),
        "local": join_host_port(*conn.local),
        "message": "received" if received else "sent",
        "length": length,
        "traced_length": traced,
        "cut": cut,
        "max_packet": max_packet,
        "call_id": call_id.decode("utf-8", "replace") if call_id is not None else None,
    }
    if call_id_length is not None:
        record["call_id_length"] = call_id_length
    return json.dumps(record, separators=(",", ":")).encode()
