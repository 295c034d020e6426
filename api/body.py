"""JSON request bodies sent without `content-type: application/json` (as `curl -d` sends them).

A PUT or PATCH body under /api/ is JSON whatever its content type says: one that parses is
passed on as JSON; one that does not is answered with a 422 that says the body must be JSON.
POST is left alone: a browser may send a cross-site POST without asking first (a "simple"
request), never a PUT or a PATCH, so reading every body as JSON opens no CSRF hole.
"""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"PUT", "PATCH"})
#: larger bodies are refused (413); the API's bodies are a few hundred bytes
MAX_BODY = 1 << 20


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class JsonBodies:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in METHODS
                or not str(scope["path"]).startswith("/api/")):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        given = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), None)
        if given is not None and is_json(given):
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
                await JSONResponse({"detail": "request body too large"}, 413)(scope, receive,
                                                                               send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                json.loads(body)
            except ValueError:
                what = f"content-type {given!r}" if given else "no content-type"
                await _not_json(what)(scope, receive, send)
                return
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)


def _not_json(what: str) -> JSONResponse:
    """A 422 shaped like FastAPI's own validation errors (the schema documents that shape)."""
    msg = (f"the body must be JSON (send it with content-type: application/json); it came "
           f"with {what} and is not JSON")
    return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": msg}]},
                        status_code=422)
