"""The FastAPI application; it runs in the sidecar's own event loop (see `api.server`)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import models
from api.auth import OPEN_PATHS, token_middleware
from api.body import JsonBodies, json_safe_validation_errors
from api.docs import app_with_docs, declare_bearer
from api.origin import HostAndOrigin
from api.status import install_status
from api.timing import time_limit
from hep.address import join_host_port
from tlstrace import __version__
from tlstrace.control import (
    CertificateView,
    ConnectionView,
    Control,
    NoDestination,
    SwitchedBy,
    TraceRules,
    TraceStatus,
)
from tlstrace.metrics import CONTENT_TYPE_LATEST, Metrics

ConnId = Annotated[int, Path(ge=0, le=2**64 - 1, description="connection id")]


def _info(conn: ConnectionView) -> models.ConnectionInfo:
    now = time.time()
    return models.ConnectionInfo(
        id=str(conn.id),
        direction=conn.direction,
        state=conn.state,
        listener=conn.listener,
        remote=conn.remote,
        local=conn.local,
        sni=conn.sni,
        server_domain=conn.server_domain,
        tls_version=conn.tls_version,
        cipher=conn.cipher,
        alpn=conn.alpn,
        resumed=conn.resumed,
        handshake_ms=conn.handshake_ms,
        peer_subject=conn.peer_subject,
        age_seconds=round(now - conn.started, 3),
        bytes_in=conn.bytes_in,
        bytes_out=conn.bytes_out,
        messages_in=conn.messages_in,
        messages_out=conn.messages_out,
        traced=conn.traced,
        registered_for_seconds=None
        if conn.registered_until is None
        else max(0.0, round(conn.registered_until - now, 1)),
        transport=conn.transport,
        ws_path=conn.ws_path,
        ws_origin=conn.ws_origin,
        user_agent=conn.user_agent,
    )


def _detail(conn: ConnectionView) -> models.ConnectionDetail:
    return models.ConnectionDetail(
        **_info(conn).model_dump(),
        peer_certificate=_certificate(conn.peer_certificate),
        local_certificate=_certificate(conn.local_certificate),
    )


def _certificate(cert: CertificateView | None) -> models.Certificate | None:
    if cert is None:
        return None
    return models.Certificate(
        subject=cert.subject,
        issuer=cert.issuer,
        serial=cert.serial,
        sha256=cert.sha256,
        not_after=cert.not_after,
    )


def _trace_state(state: TraceStatus) -> models.TraceState:
    return models.TraceState(
        tracing="on" if state.enabled else "off",
        destinations=list(state.destinations),
        keys=state.keys,
        filter_rules=state.filter_rules,
        traced_connections=state.traced_connections,
        workers_not_answering=list(state.not_answering),
        **time_limit(state.until),
    )


def create_app(control: Control) -> FastAPI:
    """The API over `control`, all it knows of the process. Every handler is `async def`: it
    runs in the event loop's thread, the only thread that may touch the relay (a plain `def`
    would run in a worker thread)."""
    app = app_with_docs(
        title="tlstrace",
        version=__version__,
        description="Control and observe the tlstrace SIP TLS sidecar. When a token is "
        "configured, every endpoint but /healthz, /readyz and these pages needs "
        "`Authorization: Bearer <token>` (the Authorize button).",
    )
    declare_bearer(app, OPEN_PATHS)
    app.add_middleware(JsonBodies)
    app.middleware("http")(token_middleware(lambda: control.config.api_token))
    app.add_exception_handler(StarletteHTTPException, _with_allow_header)
    app.add_exception_handler(RequestValidationError, json_safe_validation_errors)
    # added last: the outermost, before the token check
    app.add_middleware(HostAndOrigin, allowed=lambda: control.config.api_allowed_hosts)
    problems: dict[int | str, dict[str, Any]] = {
        404: {"model": models.Problem},
        401: {"model": models.Problem},
    }
    install_status(app, control)  # the status page at /, /api/status, /api/events
    scrape = Metrics(control)

    @app.get(
        "/api/trace",
        response_model=models.TraceState,
        tags=["tracing"],
        responses={401: problems[401]},
    )
    async def get_trace() -> models.TraceState:
        return _trace_state(await control.trace_state())

    @app.put(
        "/api/trace",
        response_model=models.TraceState,
        tags=["tracing"],
        responses={
            409: {"model": models.Problem},
            401: problems[401],
            400: {"model": models.Problem},
        },
    )
    async def put_trace(body: models.TraceSwitch, request: Request) -> models.TraceState:
        """Switch tracing on or off: the analogue of OpenSIPS's `tls_trace` command. With
        `for_seconds`, tracing switches itself off after that time."""
        try:
            state = await control.switch_tracing(
                body.tracing == "on", body.for_seconds, _api_client(request)
            )
        except NoDestination as e:
            raise HTTPException(409, str(e)) from None
        return _trace_state(state)

    @app.get(
        "/api/trace/filters",
        response_model=models.TraceFilters,
        tags=["tracing"],
        responses={401: problems[401]},
    )
    async def get_filters() -> models.TraceFilters:
        f = await control.trace_filter()
        return models.TraceFilters(rules=f.rules, default=f.default)

    @app.put(
        "/api/trace/filters",
        response_model=models.TraceFilters,
        tags=["tracing"],
        responses={401: problems[401], 400: {"model": models.Problem}},
    )
    async def put_filters(body: models.TraceFilters) -> models.TraceFilters:
        """Replace the rules; they decide for connections whose handshake ends from now on.
        A rule set that does not validate is refused (422) and the old one stays."""
        f = await control.set_trace_filter(TraceRules(body.rules, body.default))
        return models.TraceFilters(rules=f.rules, default=f.default)

    @app.get(
        "/api/connections",
        response_model=list[models.ConnectionInfo],
        tags=["connections"],
        responses={401: problems[401]},
    )
    async def list_connections(
        direction: Literal["inbound", "outbound"] | None = None,
        traced: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[models.ConnectionInfo]:
        return [_info(c) for c in await control.connections(direction, traced, limit)]

    @app.get(
        "/api/connections/{conn_id}",
        response_model=models.ConnectionDetail,
        tags=["connections"],
        responses=problems,
    )
    async def get_connection(conn_id: ConnId) -> models.ConnectionInfo:
        conn = await control.connection(conn_id)
        if conn is None:
            raise HTTPException(404, f"no open connection {conn_id}")
        return _detail(conn)

    @app.delete(
        "/api/connections/{conn_id}", status_code=204, tags=["connections"], responses=problems
    )
    async def close_connection(conn_id: ConnId) -> Response:
        """Close a connection (close_notify, then its backend after pending data)."""
        if not await control.close_connection(conn_id):
            raise HTTPException(404, f"no open connection {conn_id}")
        return Response(status_code=204)

    @app.get(
        "/api/destinations",
        response_model=list[models.Destination],
        tags=["tracing"],
        responses={401: problems[401]},
    )
    async def destinations() -> list[models.Destination]:
        return [
            models.Destination(
                name=s.name,
                transport=s.transport,
                address=s.address,
                state=s.state,
                connected=s.connected,
                sent=s.sent,
                dropped=s.dropped,
                send_errors=s.send_errors,
                connect_errors=s.connect_errors,
                reconnects=s.reconnects,
                queue_depth=s.queue_depth,
                last_error=s.last_error,
            )
            for s in await control.destinations()
        ]

    @app.post(
        "/api/reload",
        response_model=models.ReloadResult,
        tags=["control"],
        responses={409: {"model": models.ReloadResult}, 401: problems[401]},
    )
    async def reload(response: Response, request: Request) -> models.ReloadResult:
        """Re-read the configuration file and the certificates, as SIGHUP does, and apply
        what changed; `not_applied` lists the changed keys that need a restart (they keep
        their running value). New connections get the new certificates; open ones keep
        theirs. Reloads are coalesced: the answer is that of the first reload that starts
        after this request. On any error nothing changes (409, with the reason)."""
        outcome = await control.reload(_api_client(request))
        if not outcome.ok:
            response.status_code = 409
        return models.ReloadResult(
            reloaded=outcome.ok,
            message=outcome.message,
            applied=outcome.applied,
            not_applied=outcome.not_applied,
        )

    @app.get("/api/config", tags=["control"], responses={401: problems[401]})
    async def config() -> dict[str, Any]:
        """The configuration in force (after reloads: what was applied; keys that need a
        restart keep their running value). Secrets (`api_token`, `hep_auth_key`) show as
        "<set>"."""
        data = control.config.model_dump(mode="json")
        for key in ("api_token", "hep_auth_key"):
            if data.get(key) is not None:
                data[key] = "<set>"
        return data

    @app.get("/healthz", response_model=models.Health, tags=["health"])
    async def healthz() -> models.Health:
        return models.Health(status="ok")

    @app.get(
        "/readyz",
        response_model=models.Readiness,
        tags=["health"],
        responses={503: {"model": models.Readiness}},
    )
    async def readyz(response: Response) -> models.Readiness:
        """Ready when every listener is up and every backend accepts TCP connections."""
        readiness = await control.readiness()
        if not readiness.ready:
            response.status_code = 503
        return models.Readiness(ready=readiness.ready, checks=readiness.checks)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(await scrape.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _api_client(request: Request) -> SwitchedBy:
    """The API client, for the log lines of what it switches."""
    client = join_host_port(*request.client) if request.client else "unknown"
    return SwitchedBy("api", f"API client {client}", client)


async def _with_allow_header(request: Request, exc: Exception) -> Response:
    """Starlette's 405 lacks the Allow header RFC 9110 asks for; add it."""
    assert isinstance(exc, StarletteHTTPException)
    response = await http_exception_handler(request, exc)
    if exc.status_code == 405:
        allowed: set[str] = set()
        for route in request.app.routes:
            if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
                allowed |= route.methods or set()
        response.headers["Allow"] = ", ".join(sorted(allowed))
    return response
