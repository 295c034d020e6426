"""Request and response bodies of the REST API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tlstrace.config.model import TraceRule


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraceSwitch(_Body):
    tracing: Literal["on", "off"]


class TraceState(BaseModel):
    tracing: Literal["on", "off"]
    destinations: list[str] = Field(description="HEP destinations traced to")
    keys: bool = Field(description="whether session keys go into the traces")
    filter_rules: int
    traced_connections: int = Field(description="open connections being traced")
    applies_to: str = Field(
        default="on: connections already open are traced from now on (without their past "
        "handshake event) and new ones from their handshake; off: nothing more is sent for any "
        "connection",
    )


class TraceFilters(_Body):
    rules: list[TraceRule] = Field(
        description="ordered; the first rule whose given fields all match decides")
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
                    "connections'")
    not_applied: dict[str, str] = Field(
        default_factory=dict,
        description="changed top-level keys that need a restart (the running value stays): "
                    "key -> why")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str]


class Problem(BaseModel):
    detail: str
