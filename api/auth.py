"""Bearer-token check for every endpoint but the health checks."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from api.status import PUBLIC_PATHS

OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | PUBLIC_PATHS  # the status page: no data


def token_middleware(
    token: Callable[[], str | None],
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """`token()` is read per request, so a reload can change it."""

    async def check(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        expected = token()
        if expected and request.url.path not in OPEN_PATHS:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    given.strip().encode(), expected.encode()):
                return JSONResponse({"detail": "a valid bearer token is required"},
                                    status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="tlstrace"'})
        return await call_next(request)

    return check
