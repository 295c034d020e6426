"""The status page at `/` (plain HTML, CSS and JS from this package: no CDN, works offline),
the summary it polls (`GET /api/status`) and the live tail of connection events it reads
(`GET /api/events`, server-sent events).

The page's files hold no data and are served without the token; everything they show comes
from endpoints that need the token when one is configured (the page asks for it and sends it
as a bearer header, so it never appears in a URL or a log).
"""

from __future__ import annotations

import asyncio
import platform
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from importlib import resources

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api import models
from tlstrace import __version__
from tlstrace.control import Control
from tlstrace.feed import QUEUE_SIZE, EventFeed, Viewer

#: the page's files: path -> (package file, content type)
PAGE_FILES = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/ui/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/ui/status.css": ("status.css", "text/css; charset=utf-8"),
}
#: served without the token: they hold no data
PUBLIC_PATHS = frozenset(PAGE_FILES)

PAGE_HEADERS = {
    # only this origin's script and style, fetches to this origin only, no framing (the page
    # has a tracing switch), nothing inline: data shown by the page can never run as code
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

#: seconds between keep-alive comments on an idle event stream (they also reveal a viewer
#: that went away)
HEARTBEAT = 15.0


class FailureCount(BaseModel):
    direction: str
    reason: str
    count: int


class EventsInfo(BaseModel):
    viewers: int = Field(description="clients reading /api/events now")
    max_viewers: int
    queue_size: int = Field(description="events a viewer may have waiting; more are dropped")
    published: int = Field(description="connection events given to viewers since start")
    dropped: int = Field(description="events dropped for viewers that did not keep up")


class Status(BaseModel):
    version: str
    python: str
    openssl: str
    uptime_seconds: float
    tracing: str
    connections_open: dict[str, int] = Field(description="open TLS connections by direction")
    connections_accepted: int
    connections_refused: int
    handshakes_ok: int
    handshakes_failed: int
    handshake_failures: list[FailureCount] = Field(
        description="failed handshakes since start, by direction and reason (non-zero only), "
        "most frequent first"
    )
    closed: dict[str, int] = Field(description="closed connections by reason (non-zero only)")
    events: EventsInfo


def _read(name: str) -> bytes:
    return resources.files("api").joinpath("static", name).read_bytes()


def install_status(app: FastAPI, control: Control) -> None:
    """Add the status page, `GET /api/status` and `GET /api/events` to the API."""
    files = {path: (_read(name), ctype) for path, (name, ctype) in PAGE_FILES.items()}

    def page_route(path: str) -> None:
        body, ctype = files[path]

        async def page() -> Response:
            return Response(body, media_type=ctype, headers=PAGE_HEADERS)

        app.get(path, include_in_schema=False)(page)

    for path in files:
        page_route(path)

    @app.get(
        "/api/status",
        response_model=Status,
        tags=["status"],
        responses={401: {"model": models.Problem}},
    )
    async def status() -> Status:
        """What the status page shows at the top: counters since start, handshake failures by
        reason, and the event feed's figures."""
        counters = await control.counters()
        st = counters.stats
        open_ = {"inbound": 0, "outbound": 0}
        for (_, direction), n in counters.open_connections.items():
            open_[direction] += n
        failures: Counter[tuple[str, str]] = Counter()
        for key, n in st.handshake_failures.items():
            if n:  # keyed (listener, direction, reason): summed over the listeners
                failures["outbound" if "outbound" in key else "inbound", key[-1]] += n
        closed: Counter[str] = Counter()
        for (*_, reason), n in st.closed.items():
            closed[reason] += n
        feed = control.feed
        return Status(
            version=__version__,
            python=platform.python_version(),
            openssl=ssl.OPENSSL_VERSION,
            uptime_seconds=round(time.time() - counters.started, 1),
            tracing="on" if counters.tracing.enabled else "off",
            connections_open=open_,
            connections_accepted=sum(st.accepted.values()),
            connections_refused=sum(st.refused.values()),
            handshakes_ok=sum(n for key, n in st.handshakes.items() if "success" in key),
            handshakes_failed=sum(failures.values()),
            handshake_failures=[
                FailureCount(direction=d, reason=r, count=n) for (d, r), n in failures.most_common()
            ],
            closed={reason: n for reason, n in closed.items() if n},
            events=EventsInfo(
                viewers=len(feed.viewers),
                max_viewers=feed.max_viewers,
                queue_size=QUEUE_SIZE,
                published=feed.published,
                dropped=feed.dropped,
            ),
        )

    @app.get(
        "/api/events",
        tags=["status"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}},
            401: {"model": models.Problem},
            503: {"model": models.Problem},
        },
    )
    async def events() -> StreamingResponse:
        """Connection events as they happen, as server-sent events (`event: connection`, data
        one JSON object: event `accepted`, `connected`, `handshake_failed` or `closed`, id,
        direction, listener, remote, local, sni, and per event TLS version and cipher, the
        failure or close reason, byte and message counts). A viewer that does not keep up
        loses events, never slows the relay: `event: dropped` then says how many it missed."""
        feed = control.feed
        viewer = feed.subscribe()
        if viewer is None:
            raise HTTPException(503, f"{feed.max_viewers} event viewers are connected already")
        token = control.config.api_token
        return StreamingResponse(
            _stream(feed, viewer, lambda: control.config.api_token == token),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _stream(
    feed: EventFeed, viewer: Viewer, allowed: Callable[[], bool]
) -> AsyncIterator[str]:
    """The viewer's events until it goes, the sidecar stops, or a reload changes the token
    the stream was opened with (the viewer must then come back with the new one)."""
    try:
        yield "retry: 3000\n: tlstrace connection events\n\n"
        while not viewer.closed and allowed():
            try:
                await asyncio.wait_for(viewer.wakeup.wait(), HEARTBEAT)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            events, missed = viewer.take()
            out = [f"event: connection\ndata: {data}\n\n" for data in events]
            if missed:  # they came after the queued ones, which filled the queue
                out.append(
                    f'event: dropped\ndata: {{"dropped":{missed},'
                    f'"viewer_dropped":{viewer.dropped}}}\n\n'
                )
            if out:
                yield "".join(out)
    finally:
        feed.unsubscribe(viewer)
