"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tlstrace.config.model import MAX_TRACE_SECONDS, TraceRule


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraceSwitch(_Body):
    tracing: Literal["on", "off"]
    for_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_TRACE_SECONDS,
        allow_inf_nan=False,
        strict=True,
        examples=[600],
        description="with on: tracing switches itself off after this many seconds; "
        "unset: it stays on (a switch without a limit removes the one in force)",
    )

    @model_validator(mode="after")
    def _limit_needs_on(self) -> TraceSwitch:
        if self.for_seconds is not None and self.tracing != "on":
            raise ValueError("for_seconds goes with tracing: on")
        return self


class TraceState(BaseModel):
    tracing: Literal["on", "off"]
    destinations: list[str] = Field(description="HEP destinations traced to")
    keys: bool = Field(description="whether session keys go into the traces")
    filter_rules: int
    traced_connections: int = Field(description="open connections being traced")
    until: datetime | None = Field(
        None, description="when tracing switches itself off (UTC); null: no limit"
    )
    remaining_seconds: float | None = Field(None, description="seconds until then; null: no limit")
    workers_not_answering: list[int] = Field(
        default_factory=list,
        description="with worker processes: the workers that did not answer in time (stuck; "
        "they get the state when they answer again or are replaced); the rest describes the others",
    )
    applies_to: str = Field(
        default="on: connections already open are traced from now on (without their past "
        "handshake event) and new ones from their handshake; off: nothing more is sent for any "
        "connection",
    )


class TraceFilters(_Body):
    rules: list[TraceRule] = Field(
        description="ordered; the first rule whose given fields all match decides"
    )
    default: Literal["allow", "deny"] = "allow"


class Certificate(BaseModel):
    subject: str
    issuer: str
    serial: str
    sha256: str
    not_after: str


class ConnectionInfo(BaseModel):
    id: str = Field(description="64-bit connection id, as in the traces' correlation id")
    direction: Literal["inbound", "outbound"]
    state: str
    listener: str
    remote: str
    local: str
    sni: str | None
    server_domain: str | None = Field(
        description="the [[server_domain]] whose certificate, session cache and "
        "client-certificate policy the handshake ran on (inbound)"
    )
    tls_version: str | None
    cipher: str | None
    alpn: str | None
    resumed: bool
    handshake_ms: float | None
    peer_subject: str | None
    age_seconds: float
    bytes_in: int = Field(description="SIP bytes received from the TLS peer")
    bytes_out: int = Field(description="SIP bytes sent to the TLS peer")
    messages_in: int
    messages_out: int
    traced: bool
    registered_for_seconds: float | None = Field(
        description="seconds until the registration the SIP server granted over this "
        "connection expires (it is held open until then plus registration_margin)"
    )
    transport: Literal["tls", "wss", "ws"] = Field(
        "tls", description="how the client's SIP arrives: TLS, WebSocket over TLS, WebSocket"
    )
    ws_path: str | None = Field(None, description="WebSocket: the Upgrade's request target")
    ws_origin: str | None = Field(None, description="WebSocket: the Upgrade's Origin header")
    user_agent: str | None = Field(
        None, description="WebSocket: the Upgrade's User-Agent header (the browser)"
    )


class ConnectionDetail(ConnectionInfo):
    peer_certificate: Certificate | None
    local_certificate: Certificate | None


class Destination(BaseModel):
    name: str
    transport: str
    address: str
    state: str
    connected: bool
    sent: int
    dropped: int
    send_errors: int
    connect_errors: int
    reconnects: int
    queue_depth: int
    last_error: str | None


class ReloadResult(BaseModel):
    reloaded: bool
    message: str
    applied: dict[str, str] = Field(
        default_factory=dict,
        description="changed top-level keys now in force: key -> 'applied' or 'applied to new "
        "connections'",
    )
    not_applied: dict[str, str] = Field(
        default_factory=dict,
        description="changed top-level keys that need a restart (the running value stays): "
        "key -> why",
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class Problem(BaseModel):
    detail: str
