"""Bearer-token check for every endpoint but the health checks and the documentation pages."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from api.docs import is_docs_path
from api.status import PUBLIC_PATHS

#: API operations open without the token (and the status page's files: they hold no data)
OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | PUBLIC_PATHS


def token_middleware(
    token: Callable[[], str | None],
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """`token()` is read per request, so a reload can change it."""

    async def check(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        expected = token()
        path = request.url.path
        if expected and path not in OPEN_PATHS and not is_docs_path(path):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), expected.encode()
            ):
                return JSONResponse(
                    {"detail": "a valid bearer token is required"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="tlstrace"'},
                )
        return await call_next(request)

    return check
