"""JSON request bodies sent without `content-type: application/json` (as `curl -d` sends them).

A PUT or PATCH body under /api/ is JSON whatever its content type says: one that parses is
passed on as JSON; one that does not is answered with a 422 that says the body must be JSON.
POST is left alone: a browser may send a cross-site POST without asking first (a "simple"
request), never a PUT or a PATCH, so reading every body as JSON opens no CSRF hole.

Every JSON body under /api/ (PUT, PATCH, or POST marked as JSON) must be strict JSON: NaN,
Infinity and numbers too large for a float (1e400) are answered with a 422, as is a body that
does not parse; FastAPI would otherwise take them as floats and fail to encode its own answer.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"PUT", "PATCH"})
#: larger bodies are refused (413); the API's bodies are a few hundred bytes
MAX_BODY = 1 << 20


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonBodies:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in METHODS | {"POST"}
            or not str(scope["path"]).startswith("/api/")
        ):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        given = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), None)
        marked = given is not None and is_json(given)
        if scope["method"] not in METHODS and not marked:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                strict_loads(body)
            except NonFinite as e:
                await _unprocessable("json_invalid", str(e))(scope, receive, send)
                return
            except ValueError:
                if marked:  # FastAPI words it, with the position
                    await self.app(scope, _replay(body, receive), send)
                    return
                what = f"content-type {given!r}" if given else "no content-type"
                await _not_json(what)(scope, receive, send)
                return
        if body and not marked:
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        await self.app({**scope, "headers": headers}, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class NonFinite(ValueError):
    """NaN, Infinity, or a number beyond a float's range: not JSON (RFC 8259)."""


def _constant(name: str) -> Any:
    raise NonFinite(f"{name} is not a JSON number (RFC 8259)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFinite(f"{text} is too large a number")
    return value


def strict_loads(body: bytes) -> Any:
    """json.loads without NaN, Infinity and numbers that overflow to infinity."""
    return json.loads(body, parse_constant=_constant, parse_float=_float)


def _not_json(what: str) -> JSONResponse:
    msg = (
        f"the body must be JSON (send it with content-type: application/json); it came "
        f"with {what} and is not JSON"
    )
    return _unprocessable("json_invalid", msg)


def _unprocessable(kind: str, msg: str) -> JSONResponse:
    """A 422 shaped like FastAPI's own validation errors (the schema documents that shape)."""
    return JSONResponse({"detail": [{"type": kind, "loc": ["body"], "msg": msg}]}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def json_safe_validation_errors(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, with non-finite numbers in `input` written as strings (JSONResponse
    cannot encode them): a second line of defence behind `strict_loads`."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)
