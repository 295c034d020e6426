"""What a reload (SIGHUP, `POST /api/reload`) does with each top-level configuration key.

Every key of `Config` has a decision here: applied at once, applied to connections opened
from now on, or kept as it runs until a restart (the reload then says so, in the log and in
the API's answer, and the configuration in force keeps the running value). A key without a
decision is treated as needing a restart, and the test over the keys of the model fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tlstrace.config import Config, Listener


class Apply(StrEnum):
    AT_ONCE = "applied"
    NEW_CONNECTIONS = "applied to new connections"
    RESTART = "needs a restart"


_NEW = Apply.NEW_CONNECTIONS
_NOW = Apply.AT_ONCE
_RESTART = Apply.RESTART

#: key -> (decision, what it means)
DECISIONS: dict[str, tuple[Apply, str]] = {
    "tls_port": (_RESTART, "listener endpoints are parsed and bound at start-up"),
    "tls_crlf_pingpong": (_NEW, "each connection's framer is set up when it opens"),
    "tls_crlf_drop": (_NEW, "each connection's framer is set up when it opens"),
    "tls_max_msg_chunks": (_NEW, "each connection's framer is set up when it opens"),
    "cert_check_on_conn_reusage": (_NOW, "read at each outbound connection lookup"),
    "tls_handshake_timeout": (_NEW, "each handshake's timer is set when it starts"),
    "tls_send_timeout": (_NOW, "read at each timeout check"),
    "max_msg_size": (_NEW, "each connection's framer is set up when it opens"),
    "tcp_max_msg_time": (_NOW, "read at each timeout check"),
    "tcp_connection_lifetime": (_NOW, "read at each timeout check"),
    "registration_margin": (_NOW, "read at each timeout check"),
    "tcp_max_connections": (_NOW, "read at each accept"),
    "conn_buffer_limit": (_NOW, "read at each write"),
    "shutdown_timeout": (_NOW, "read when shutting down"),
    "backend_probe_interval": (_NOW, "read before each probe round"),
    "trunk_max_transactions": (
        _RESTART,
        "a trunk's routing tables are sized when its link to the peer is first made, and kept",
    ),
    "trunk_max_dialogs": (
        _RESTART,
        "a trunk's routing tables are sized when its link to the peer is first made, and kept",
    ),
    "trunk_max_table_bytes": (
        _RESTART,
        "a trunk's routing tables are sized when its link to the peer is first made, and kept",
    ),
    "trunk_dialog_idle": (
        _RESTART,
        "a trunk's routing tables are sized when its link to the peer is first made, and kept",
    ),
    "reuse_port": (_RESTART, "a socket option of the listening sockets, bound at start-up"),
    "workers": (_RESTART, "the worker processes are started at start-up"),
    "config_watch": (_NOW, "the file watch starts or stops"),
    "state_dir": (_NEW, "the generated certificate is taken from it for new connections"),
    "log_level": (_NOW, "the root logger's level is set"),
    "log_format": (_NOW, "the lines after the reload's own are written in the new format"),
    "trace_on": (_NOW, "tracing is switched as the file now says (as PUT /api/trace does)"),
    "trace_on_for_seconds": (
        _NOW,
        "tracing that the file switches on runs for the new limit from the reload on",
    ),
    "hep_max_packet": (_NOW, "read for each packet"),
    "hep_id": (_NOW, "new senders start; the old ones send what they queued, then stop"),
    "trace_destination": (_NOW, "new senders start; the old ones send what they queued, then stop"),
    "hep_capture_id": (_NEW, "HEP headers are built once per traced connection"),
    "hep_auth_key": (_NEW, "HEP headers are built once per traced connection"),
    "hep_node_name": (_NEW, "HEP headers are built once per traced connection"),
    "hep_ca_list": (_NOW, "the tls senders are started again with it"),
    "hep_verify_cert": (_NOW, "the tls senders are started again with it"),
    "trace_ip_proto": (_NEW, "HEP headers are built once per traced connection"),
    "trace_backend": (_NEW, "decided once per traced connection"),
    "trace_event_format": (_NOW, "read for each event"),
    "homer5_delim": (_NOW, "read for each event"),
    "trace_sessions": (_NOW, "the session records of open connections follow"),
    "trace_keys": (_NOW, "for handshakes from now on (keys of finished ones are gone)"),
    "keylog_file": (_NOW, "for handshakes from now on"),
    "trace_filter": (_NEW, "the rules decide when a connection's handshake ends"),
    "trace_filter_default": (_NEW, "the rules decide when a connection's handshake ends"),
    "api_listen": (_RESTART, "the API's socket is bound at start-up"),
    "api_token": (_NOW, "checked on each request"),
    "api_allowed_hosts": (_NOW, "checked on each request"),
    "api_max_connections": (_NOW, "read at each API accept"),
    "api_request_timeout": (_NOW, "read when an API connection opens or answers"),
    "fd_reserve": (_NOW, "read at each API accept"),
    "tls_keepalive_rate": (_NOW, "read at each keep-alive"),
    "tls_max_non_sip_records": (_NOW, "read at each TLS record without SIP"),
    "ws_origins": (_NEW, "each WebSocket connection's framer is set up when it opens"),
    "ws_max_upgrade_size": (_NEW, "each WebSocket connection's framer is set up when it opens"),
    "ws_upgrade_timeout": (_NOW, "read at each timeout check"),
    "trace_ws_ip_proto": (_NEW, "HEP headers are built once per traced connection"),
    "handshake_rate_per_source": (
        _NOW,
        "the limiter is set up again (its table kept when the settings did not change)",
    ),
    "handshake_rate_burst": (_NOW, "the limiter is set up again"),
    "handshake_rate_sources": (_NOW, "the limiter is set up again"),
    "listener": (
        _RESTART,
        "listening sockets, backends and peers are set up at start-up "
        "(a change of `domains` only is applied to new connections)",
    ),
    "server_domain": (_NEW, "new TLS contexts; open connections keep theirs"),
    "client_domain": (_NEW, "new TLS contexts; open connections keep theirs"),
}


def decision(key: str) -> tuple[Apply, str]:
    return DECISIONS.get(key, (_RESTART, "no reload decision for this key"))


@dataclass
class ReloadOutcome:
    """What a reload did: the answer of `POST /api/reload` and the log's summary."""

    ok: bool
    message: str
    applied: dict[str, str] = field(default_factory=dict)
    not_applied: dict[str, str] = field(default_factory=dict)


@dataclass
class ReloadPlan:
    """The configuration to put in force, and what changed."""

    config: Config
    #: changed keys taken from the file: key -> how
    applied: dict[str, str] = field(default_factory=dict)
    #: changed keys kept as they run: key -> why
    not_applied: dict[str, str] = field(default_factory=dict)


def plan(running: Config, loaded: Config) -> ReloadPlan:
    """Compare the running configuration with the one just loaded. The result's `config` is
    the loaded one with every key that needs a restart set back to its running value."""
    keep: dict[str, Any] = {}
    out = ReloadPlan(loaded)
    for key in Config.model_fields:
        old, new = getattr(running, key), getattr(loaded, key)
        if old == new:
            continue
        how, why = decision(key)
        if key == "listener" and _without_domains(old) == _without_domains(new):
            how = Apply.NEW_CONNECTIONS  # only the server domains offered changed
        if how is Apply.RESTART:
            keep[key] = old
            out.not_applied[key] = f"{how.value}: {why}"
        else:
            out.applied[key] = how.value
    if keep:
        out.config = loaded.model_copy(update=keep)
    return out


def _without_domains(listeners: list[Listener]) -> list[Listener]:
    return [li.model_copy(update={"domains": []}) for li in listeners]
