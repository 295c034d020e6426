"""The API's own documentation pages, usable on a machine without internet access.

Swagger UI (`/docs`) and ReDoc (`/redoc`) get their scripts and styles from the installed
`fastapi-offline` package, served under `/docs/static/`, instead of a CDN. The OpenAPI schema
declares the bearer scheme, so Swagger UI's Authorize button sends
`Authorization: Bearer <token>` with "Try it out". The pages and the schema describe the API
and expose nothing, so they open without the token (see `api.auth`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: where the pages' assets are served
STATIC_PREFIX = "/docs/static/"
#: the documentation pages and the schema
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
SCHEME = "bearer"
UNAUTHORIZED = {
    "description": "Unauthorized: a token is configured and the request lacks it",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        }
    },
}


#: the pages may load from the API's own origin only (ReDoc would fetch its logo from a CDN);
#: Swagger UI starts from an inline script, and both style inline; ReDoc searches in a worker
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
PAGES = frozenset({"/docs", "/redoc"})


def app_with_docs(**kwargs: Any) -> FastAPI:
    """A FastAPI application whose /docs and /redoc load nothing from outside."""
    app = FastAPIOffline(static_url=STATIC_PREFIX.rstrip("/"), **kwargs)
    app.add_middleware(OwnOriginOnly)
    return app


class OwnOriginOnly:
    """ASGI middleware: a Content-Security-Policy on the two pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PAGES:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = POLICY
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, with_policy)


def is_docs_path(path: str) -> bool:
    return path in DOCS_PATHS or path.startswith(STATIC_PREFIX)


def declare_bearer(app: FastAPI, open_paths: Collection[str]) -> None:
    """Declare the bearer scheme in the schema, required by every operation but `open_paths`
    (when a token is configured: the schema stays the same when a reload sets one)."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the api_token (or TLSTRACE_API_TOKEN) of the sidecar, when one is "
            "configured",
        }
        for path, operations in schema.get("paths", {}).items():
            if path in open_paths:
                continue
            for operation in operations.values():
                operation["security"] = [{SCHEME: []}]
                operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
