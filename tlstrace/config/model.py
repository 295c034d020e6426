"""The one typed configuration model. Every default lives here and nowhere else.

Names follow OpenSIPS (`proto_tls`, `tls_mgm`, core `tcp_*`) where it has one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tlstrace.config.endpoint import WS_SCHEMES, Endpoint, parse_endpoint

TlsVersionName = Literal["TLSv1.2", "TLSv1.3"]
ClientCertMode = Literal["off", "optional", "required"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
#: the most worker processes (a connection id carries its worker's index in 6 bits)
MAX_WORKERS = 64
#: the longest time tracing can be switched on for (30 days)
MAX_TRACE_SECONDS = 30 * 86400
#: Key-exchange groups offered and accepted unless a domain says otherwise: cheap and safe
#: (no finite-field group: a client choosing ffdhe8192 costs the server 200-300 X25519s).
DEFAULT_GROUPS = ("X25519", "P-256", "P-384")


def default_state_dir() -> Path:
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tlstrace"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _endpoint(value: Any, info: ValidationInfo) -> Any:
    """Parse endpoint strings; `tls:` ones without a port get `tls_port` (from the context)."""
    if isinstance(value, str):
        tls_port = (info.context or {}).get("tls_port", 5061)
        if value.startswith(("wss:", "ws:")):
            return parse_endpoint(value)  # no default port
        return parse_endpoint(value, default_port=tls_port if value.startswith("tls:") else 5060)
    return value


EndpointField = Annotated[Endpoint, Field(json_schema_extra={"type": "string"})]


class ServerDomain(_Model):
    """A TLS server identity (OpenSIPS tls_mgm `server_domain`), chosen by SNI."""

    name: str
    #: SNI globs matched case-insensitively; "*" matches anything (and no SNI), "none" only no SNI.
    match_sip_domain: list[str] = ["*"]
    #: PEM certificate (may include the chain). Unset on the default domain: a self-signed
    #: certificate is generated in state_dir on first run and reused.
    certificate: Path | None = None
    private_key: Path | None = None
    #: Extra PEM chain appended after the certificate.
    chain: Path | None = None
    #: CA bundle that client certificates are verified against.
    ca_list: Path | None = None
    client_cert: ClientCertMode = "off"
    min_version: TlsVersionName = "TLSv1.2"
    max_version: TlsVersionName = "TLSv1.3"
    #: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults). Unset: OpenSSL's.
    ciphers_list: str | None = None
    #: TLS 1.3 session tickets sent after each full handshake (OpenSSL's default is 2); 0 turns
    #: session resumption off (TLS 1.2 tickets too).
    session_tickets: int = Field(default=2, ge=0, le=16)
    #: Key-exchange groups accepted (OpenSSL's names), most preferred first: TLS 1.3 key
    #: shares and TLS 1.2 ECDHE curves. Finite-field groups (ffdhe*) only when listed.
    groups: list[str] = list(DEFAULT_GROUPS)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        return _check_groups(value)

    @model_validator(mode="after")
    def _check(self) -> ServerDomain:
        _check_identity(self)
        if self.client_cert != "off" and self.ca_list is None:
            raise ValueError(f"ca_list: client_cert = {self.client_cert!r} needs ca_list")
        if not self.match_sip_domain:
            raise ValueError("match_sip_domain: the list is empty")
        return self


class ClientDomain(_Model):
    """A TLS client identity (OpenSIPS tls_mgm `client_domain`) for outbound connections."""

    name: str
    certificate: Path | None = None
    private_key: Path | None = None
    chain: Path | None = None
    #: CA bundle the peer is verified against; unset: the system's default CAs.
    ca_list: Path | None = None
    verify_cert: bool = True
    #: SNI sent and host name verified; unset: the peer's host when it is a name.
    server_name: str | None = None
    min_version: TlsVersionName = "TLSv1.2"
    max_version: TlsVersionName = "TLSv1.3"
    ciphers_list: str | None = None
    #: Key-exchange groups offered (OpenSSL's names), most preferred first.
    groups: list[str] = list(DEFAULT_GROUPS)

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        return _check_groups(value)

    @model_validator(mode="after")
    def _check(self) -> ClientDomain:
        _check_identity(self)
        return self


def _check_identity(d: ServerDomain | ClientDomain) -> None:
    """What a server and a client domain both need: a key with a certificate, sane versions."""
    if (d.certificate is None) != (d.private_key is None):
        raise ValueError("private_key: certificate and private_key must be set together")
    if d.min_version > d.max_version:
        raise ValueError("min_version: min_version is above max_version")


def _check_groups(names: list[str]) -> list[str]:
    """Each name known to the OpenSSL in use, none twice."""
    from tlstrace.tls.groups import GroupsError, check_names

    try:
        check_names(names)
    except GroupsError as e:
        raise ValueError(str(e)) from None
    return names


#: RFC 6750's b64token: the characters of a bearer token
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)

_NETWORK_PATTERN = r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$"


class TraceRule(_Model):
    """One trace filter rule; the first rule whose given fields all match decides."""

    action: Literal["allow", "deny"]
    #: remote address or network (CIDR) of the connection's peer
    remote: str | None = Field(None, pattern=_NETWORK_PATTERN, examples=["10.0.0.0/8"])
    remote_port: int | None = Field(None, ge=1, le=65535)
    #: tlstrace's own address (listener, or the local side of an outbound connection)
    local: str | None = Field(None, pattern=_NETWORK_PATTERN, examples=["192.0.2.10"])
    local_port: int | None = Field(None, ge=1, le=65535)
    #: SNI glob, case-insensitive; "none" matches connections without SNI
    sni: str | None = None
    direction: Literal["inbound", "outbound"] | None = None

    @field_validator("remote", "local")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            import ipaddress

            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return value


DEFAULT_LISTENER = {"listen": "tls:127.0.0.1:5061", "backend": "tcp:127.0.0.1:5060"}


class Listener(_Model):
    """A socket tlstrace listens on.

    `tls:` listeners terminate TLS and relay to `backend`; `wss:` listeners terminate TLS and
    then WebSocket (`ws:`: WebSocket without TLS) and relay to `backend`; `tcp:` listeners take
    SIP from the local SIP server and relay it over TLS to `peer`.
    """

    listen: EndpointField
    backend: EndpointField | None = None
    peer: EndpointField | None = None
    #: Server domains offered on a tls listener (names); empty: all of them.
    domains: list[str] = []
    #: Client domain used towards `peer`, or towards a `tls:` backend.
    client_domain: str | None = None
    #: Send a PROXY protocol v2 header first on each backend connection.
    proxy_protocol: bool = False
    #: tcp: listeners: `tcp:HOST:PORT` of the local SIP server, to which tlstrace opens a
    #: connection for requests from the peer that belong to no known local connection; unset:
    #: they go to the local connection that sent last.
    local_target: EndpointField | None = None

    @field_validator("listen", "backend", "peer", "local_target", mode="before")
    @classmethod
    def _parse(cls, value: Any, info: ValidationInfo) -> Any:
        return _endpoint(value, info)

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and str(data.get("listen", "")).startswith(("tls:", "wss:", "ws:"))
            and "backend" not in data
        ):
            return {**data, "backend": DEFAULT_LISTENER["backend"]}
        return data

    @model_validator(mode="after")
    def _check(self) -> Listener:
        if not self.listen.is_ip:
            raise ValueError(f"listen: {self.listen.host!r} is not an IP address to listen on")
        if self.backend is not None and self.backend.scheme not in ("tcp", "tls"):
            raise ValueError("backend: must be tcp:HOST:PORT or tls:HOST:PORT")
        if self.peer is not None and self.peer.scheme in WS_SCHEMES:
            raise ValueError("peer: must be tls:HOST:PORT")
        if self.listen.scheme != "tcp":
            if self.peer is not None:
                raise ValueError("peer: for tcp: listeners; a tls: listener relays to backend")
        else:
            if self.peer is None or self.peer.scheme != "tls":
                raise ValueError("peer: a tcp: listener needs peer = 'tls:HOST:PORT'")
            if self.backend is not None:
                raise ValueError("backend: for tls: listeners; a tcp: listener relays to peer")
            if self.proxy_protocol:
                raise ValueError("proxy_protocol: applies to the backend of tls: listeners only")
        if self.local_target is not None:
            if self.listen.scheme != "tcp":
                raise ValueError(
                    "local_target: for tcp: listeners; a tls: listener relays to backend"
                )
            if self.local_target.scheme != "tcp":
                raise ValueError("local_target: must be tcp:HOST:PORT (the local SIP server)")
        return self


class Config(_Model):
    """Everything tlstrace reads at start-up. See the README for each key."""

    #: Default port of tls: endpoints written without one.
    tls_port: int = Field(5061, ge=1, le=65535)
    #: Answer a CRLFCRLF keep-alive with a CRLF pong.
    tls_crlf_pingpong: bool = True
    #: Drop a lone CRLF instead of relaying it.
    tls_crlf_drop: bool = False
    #: A message that needs more TLS records than this is an attack: close the connection.
    tls_max_msg_chunks: int = Field(4, ge=1, le=1024)
    #: Reuse an outbound TLS connection only when it was opened with the same client domain.
    cert_check_on_conn_reusage: bool = False
    #: Milliseconds for a whole TLS handshake (OpenSIPS: 100).
    tls_handshake_timeout: int = Field(5000, ge=10)
    #: Milliseconds a peer may leave written data unread before the connection is closed
    #: (OpenSIPS: 100).
    tls_send_timeout: int = Field(10000, ge=10)
    #: Largest SIP message, headers and body, in bytes.
    max_msg_size: int = Field(65535, ge=1024, le=16 * 1024 * 1024)
    #: Seconds a partial message may wait for the rest of it (OpenSIPS core tcp_max_msg_time).
    tcp_max_msg_time: float = Field(4.0, gt=0)
    #: Seconds without traffic before a connection is closed (OpenSIPS core default 120).
    tcp_connection_lifetime: float = Field(120.0, gt=0)
    #: Seconds past the expiry of a registration (granted in the SIP server's 2xx to a
    #: REGISTER sent over a client connection) during which that connection is not closed
    #: for idleness: the SIP server routes calls to the phone over it.
    registration_margin: float = Field(30.0, ge=0)
    #: Most client connections open at once; more are refused and counted.
    tcp_max_connections: int = Field(8192, ge=1)
    #: Bytes written to a peer and not yet read by it, per connection and direction, above
    #: which reading from the other side pauses.
    conn_buffer_limit: int = Field(262144, ge=4096)
    #: Keep-alives (CRLFCRLF pings, lone CRLFs) a client may send per second on average,
    #: with bursts of ten seconds' worth; more close it. 0: no limit.
    tls_keepalive_rate: float = Field(2.0, ge=0)
    #: TLS records in a row that carry no SIP (renegotiation requests, KeyUpdates, empty
    #: records, warning alerts) after which the connection is closed.
    tls_max_non_sip_records: int = Field(16, ge=1)
    #: File descriptors kept free for SIP connections: the API refuses connections when fewer
    #: than this are left under RLIMIT_NOFILE.
    fd_reserve: int = Field(64, ge=0)

    #: New TLS connections a second one source address (an IPv6 /64) may open on tls:
    #: listeners after its burst; more are refused at accept. 0: no limit.
    handshake_rate_per_source: float = Field(0.0, ge=0, allow_inf_nan=False)
    #: Connections a source may open at once before handshake_rate_per_source applies.
    handshake_rate_burst: int = Field(10, ge=1)
    #: Most source addresses tracked for handshake_rate_per_source (the least recently seen
    #: is forgotten to make room).
    handshake_rate_sources: int = Field(65536, ge=1, le=16 * 1024 * 1024)
    # -- SIP over WebSocket (wss: and ws: listeners) --------------------------------------
    #: Origins (scheme://host[:port], compared case-insensitively) whose pages may open a
    #: WebSocket connection; empty: any Origin, or none.
    ws_origins: list[str] = []
    #: Largest HTTP Upgrade request, in bytes; larger ones are refused with 431 (at most h11's
    #: own limit on an incomplete request, 16 KiB).
    ws_max_upgrade_size: int = Field(8192, ge=512, le=16384)
    #: Milliseconds a client has, once connected (after the TLS handshake on wss:), to send a
    #: complete Upgrade request.
    ws_upgrade_timeout: int = Field(5000, ge=10)
    #: IP protocol written in the SIP and event packets of WebSocket connections: 3, the value
    #: Homer's UI (homer-ui protoCheck) shows as "wss"; 50 as OpenSIPS's proto_ws/proto_wss
    #: write (Homer shows it as "udp"); 22 as Kamailio's siptrace writes for TLS, WS and WSS
    #: (Homer: "tls"); or 6 (TCP).
    trace_ws_ip_proto: Literal[3, 6, 22, 50] = 3
    #: Seconds a graceful shutdown waits for in-flight messages before closing everything.
    shutdown_timeout: float = Field(5.0, ge=0)
    #: Seconds between TCP probes of a backend no client connection tried meanwhile (keeps
    #: tlstrace_upstream_up current); 0 turns the probes off.
    backend_probe_interval: float = Field(15.0, ge=0)
    #: tcp: listeners: transactions remembered per pooled peer destination, for each direction
    #: (responses go back to the local connection that sent the request).
    trunk_max_transactions: int = Field(32768, ge=16)
    #: tcp: listeners: dialogs remembered per pooled peer destination.
    trunk_max_dialogs: int = Field(32768, ge=16)
    #: tcp: listeners: bytes each of those tables may take (keys plus 440 bytes per entry,
    #: about what CPython takes).
    trunk_max_table_bytes: int = Field(16 << 20, ge=65536)
    #: tcp: listeners: seconds a dialog is remembered after its last message.
    trunk_dialog_idle: float = Field(3600.0, gt=0)
    #: Listen with SO_REUSEPORT, so several tlstrace processes can share the ports.
    reuse_port: bool = False
    #: Relay worker processes sharing the listeners behind one API and /metrics (served by a
    #: supervisor process); "auto": the cores this process may use. 1: one process, no
    #: supervisor.
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] | Literal["auto"] = 1
    #: Reload when the configuration file changes (polled every second; a ConfigMap's
    #: `..data` symlink swap included), as SIGHUP does.
    config_watch: bool = False
    #: Where the generated certificate and key live.
    state_dir: Path = Field(default_factory=default_state_dir)
    log_level: LogLevel = "info"
    #: "text", or "json": one JSON object per line (time, level, logger, message, fields).
    log_format: LogFormat = "text"
    # -- tracing (OpenSIPS proto_tls / proto_hep names) ------------------------------------
    #: Trace when the sidecar starts; switch at run time with the API.
    trace_on: bool = False
    #: With trace_on: seconds after start-up when tracing switches itself off; 0: no limit.
    trace_on_for_seconds: float = Field(0, ge=0, le=MAX_TRACE_SECONDS)
    #: HEP destinations, `[name]host:port;transport=udp|tcp|tls` (port 9060, transport udp);
    #: without `[name]` they are named hep1, hep2, ...
    hep_id: list[str] = []
    #: Names of the hep_id destinations to trace to (a list, or one name as a string);
    #: empty: all of them.
    trace_destination: list[str] = []
    #: Capture agent id (HEP chunk 0x000c).
    hep_capture_id: int = Field(1, ge=0, le=0xFFFFFFFF)
    #: Authentication key sent in every packet (HEP chunk 0x000e); unset: none.
    hep_auth_key: str | None = None
    #: Capture node name (HEP chunk 0x0013); unset: none.
    hep_node_name: str | None = None
    #: Largest HEP packet tracing sends, in bytes (the whole packet): a SIP message that does
    #: not fit is traced truncated. 65507: the largest UDP payload over IPv4, and what
    #: heplify-server and Kamailio (tcp_rd_buf_size = 65536) take over TCP.
    hep_max_packet: int = Field(65507, ge=1024, le=65535)
    #: CA bundle for tls collectors; unset: the system's. hep_verify_cert = false skips checks.
    hep_ca_list: Path | None = None
    hep_verify_cert: bool = True
    #: IP protocol written in SIP and event packets: 6 (TCP, standard), or 22 as OpenSIPS and
    #: Kamailio do for TLS (Homer shows it as "tls"; Kamailio's sipcapture stores proto 0).
    trace_ip_proto: Literal[6, 22] = 6
    #: Also trace the plain TCP leg between tlstrace and the backend.
    trace_backend: bool = False
    #: Payload of connection events (HEP type 89): OpenSIPS's cJSON layout, or homer5 values.
    trace_event_format: Literal["json", "homer5"] = "json"
    homer5_delim: str = ":"
    #: Send one type-100 record per Call-ID describing the TLS session (Homer's Logs tab).
    trace_sessions: bool = True
    #: Put the session keys (NSS key-log lines) in the traced events. Never on by default.
    trace_keys: bool = False
    #: Append the session keys to this file (created 0600); unset: no file.
    keylog_file: Path | None = None
    #: Ordered allow/deny rules, evaluated once per connection when its handshake ends.
    trace_filter: list[TraceRule] = []
    #: What happens to a connection no rule matches.
    trace_filter_default: Literal["allow", "deny"] = "allow"
    # -- control API ---------------------------------------------------------------------
    #: HOST:PORT of the REST API and /metrics ("" turns it off). Loopback by default.
    api_listen: str = "127.0.0.1:8080"
    #: Bearer token required on every endpoint but /healthz and /readyz; unset: no token
    #: (the environment variable TLSTRACE_API_TOKEN sets it too).
    api_token: str | None = None
    #: Host names (besides IP addresses and localhost) the API answers requests for; a
    #: request with another name in its Host header is refused (DNS rebinding).
    api_allowed_hosts: list[str] = []
    #: API connections open at once; more are refused at accept.
    api_max_connections: int = Field(32, ge=1)
    #: Seconds an API connection may take to send a complete request (from its opening, or
    #: from the end of its previous answer) before it is closed.
    api_request_timeout: float = Field(10.0, gt=0)
    listener: list[Listener] = Field(
        default_factory=lambda: [Listener.model_validate(DEFAULT_LISTENER)]
    )
    server_domain: list[ServerDomain] = Field(
        default_factory=lambda: [ServerDomain(name="default")]
    )
    client_domain: list[ClientDomain] = Field(
        default_factory=lambda: [ClientDomain(name="default")]
    )

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.listener:
            raise ValueError("listener: at least one listener is needed")
        _unique("server_domain", [d.name for d in self.server_domain])
        _unique("client_domain", [d.name for d in self.client_domain])
        _unique("listener", [str(li.listen) for li in self.listener])
        server_names = {d.name for d in self.server_domain}
        client_names = {d.name for d in self.client_domain}
        for i, li in enumerate(self.listener):
            for name in li.domains:
                if name not in server_names:
                    raise ValueError(f"listener[{i}].domains: no server_domain named {name!r}")
            if li.client_domain is not None and li.client_domain not in client_names:
                raise ValueError(
                    f"listener[{i}].client_domain: no client_domain named {li.client_domain!r}"
                )
        self._check_local_targets()
        self._check_tracing()
        for d in self.server_domain:
            if d.certificate is None and d.name != "default":
                i = self.server_domain.index(d)
                raise ValueError(
                    f"server_domain[{i}].certificate: domain {d.name!r} needs certificate and "
                    "private_key (only the domain named 'default' may use the generated one)"
                )
        return self

    @field_validator("hep_id", mode="before")
    @classmethod
    def _name_hep_ids(cls, value: Any) -> Any:
        """`[name]` is optional: hep1, hep2, ... name those without one."""
        from hep.destination import with_names

        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return with_names(value)
        return value

    @field_validator("trace_destination", mode="before")
    @classmethod
    def _one_destination(cls, value: Any) -> Any:
        """One name as a string, as OpenSIPS writes it, or a list of names."""
        if isinstance(value, str):
            return [value] if value.strip() else []
        return value

    @field_validator("api_listen")
    @classmethod
    def _api_listen(cls, value: str) -> str:
        if value:
            api_address(value)
        return value

    @field_validator("ws_origins")
    @classmethod
    def _ws_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s]+|null", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return [origin.lower() for origin in value]

    @field_validator("api_allowed_hosts")
    @classmethod
    def _api_allowed_hosts(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a host name (no port, no scheme)")
        return [name.lower() for name in value]

    @field_validator("api_token")
    @classmethod
    def _api_token(cls, value: str | None) -> str | None:
        # the message never shows the token
        if value is not None:
            if not value:
                raise ValueError("is empty (leave the key out for an API without a token)")
            if not _B64TOKEN.fullmatch(value):
                raise ValueError(
                    "has characters a bearer token cannot carry (RFC 6750: "
                    "letters, digits, - . _ ~ + / and = at the end; no spaces "
                    "or line breaks around it)"
                )
        return value

    @property
    def api_address(self) -> tuple[str, int] | None:
        return api_address(self.api_listen) if self.api_listen else None

    def _check_local_targets(self) -> None:
        # tcp: listeners with the same peer share its pooled connection, hence one target
        targets: dict[Endpoint, tuple[int, Endpoint]] = {}
        for i, li in enumerate(self.listener):
            if li.peer is None or li.local_target is None:
                continue
            first = targets.setdefault(li.peer, (i, li.local_target))
            if first[1] != li.local_target:
                raise ValueError(
                    f"listener[{i}].local_target: listener[{first[0]}] sends to the same peer "
                    f"{li.peer} (one pooled connection) with local_target {first[1]}"
                )

    def _check_tracing(self) -> None:
        from hep.destination import parse_hep_ids

        try:
            names = [d.name for d in parse_hep_ids(self.hep_id)]
        except ValueError as e:
            raise ValueError(f"hep_id: {e}") from None
        for i, name in enumerate(self.trace_destination):
            if name not in names:
                raise ValueError(f"trace_destination[{i}]: no hep_id named {name!r}")

    @property
    def worker_count(self) -> int:
        """`workers` as a number: "auto" is the cores this process may use."""
        if self.workers == "auto":
            return resolve_workers("auto")
        return self.workers

    @property
    def keys_wanted(self) -> bool:
        """Whether session keys are collected at all (explicit settings only)."""
        return self.trace_keys or self.keylog_file is not None

    def server_domains_for(self, listener: Listener) -> list[ServerDomain]:
        if not listener.domains:
            return list(self.server_domain)
        return [d for d in self.server_domain if d.name in listener.domains]

    @property
    def backends(self) -> set[Endpoint]:
        """The backends of the tls: listeners, each once."""
        return {li.backend for li in self.listener if li.backend is not None}

    def client_domain_named(self, name: str | None) -> ClientDomain:
        wanted = name or "default"
        for d in self.client_domain:
            if d.name == wanted:
                return d
        return ClientDomain(name=wanted)


def api_address(text: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 in brackets) of the API."""
    ep = parse_endpoint(f"tcp:{text}")
    if not ep.is_ip:
        raise ValueError(f"{text!r}: the API listens on an IP address")
    return ep.host, ep.port


def _unique(key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{key}: {n!r} appears twice")
        seen.add(n)


def resolve_workers(value: int | str) -> int:
    """A `workers` value as a number of processes ("auto": the cores this process may use)."""
    if value == "auto":
        import os

        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return max(1, min(MAX_WORKERS, cores))
    return int(value)
