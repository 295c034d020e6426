"""A live feed of connection events for viewers (the status page's tail, `GET /api/events`).

The relay publishes from its event loop and never waits for a viewer: each viewer has a
bounded queue, and an event that finds it full is dropped for that viewer and counted (in
total and per viewer, so the viewer is told how many it missed). When no viewer is connected,
publishing costs one length check per connection event. No message content and no key
material is ever put in an event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import TYPE_CHECKING

from hep.address import join_host_port
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.hooks import ConnectionObserver, MessageTracer
from tlstrace.tls.failures import HandshakeFailure

if TYPE_CHECKING:
    from collections.abc import Iterator

#: events a viewer may have waiting before further ones are dropped for it
QUEUE_SIZE = 256
#: viewers connected at once
MAX_VIEWERS = 16


class Viewer:
    """One subscriber: a bounded queue of encoded events and how many it missed."""

    __slots__ = ("closed", "dropped", "missed", "queue", "wakeup")

    def __init__(self) -> None:
        self.queue: deque[str] = deque()
        self.wakeup = asyncio.Event()
        #: events dropped for this viewer since it last took its queue
        self.missed = 0
        #: events dropped for this viewer in all
        self.dropped = 0
        self.closed = False

    @property
    def stalled(self) -> bool:
        """Its queue is full: it has not taken anything for QUEUE_SIZE events."""
        return len(self.queue) >= QUEUE_SIZE

    def take(self) -> tuple[list[str], int]:
        """The waiting events and the number missed since the last take."""
        events, missed = list(self.queue), self.missed
        self.queue.clear()
        self.missed = 0
        self.wakeup.clear()
        return events, missed


class EventFeed:
    def __init__(self, max_viewers: int = MAX_VIEWERS) -> None:
        self.max_viewers = max_viewers
        self.viewers: set[Viewer] = set()
        self.published = 0
        self.dropped = 0
        self.seq = 0

    def subscribe(self) -> Viewer | None:
        """A new viewer, or None when `max_viewers` are connected and none of them is stalled
        (stalled ones are let go to make room: they get no more events)."""
        if len(self.viewers) >= self.max_viewers:
            for viewer in [v for v in self.viewers if v.stalled]:
                self.unsubscribe(viewer)
            if len(self.viewers) >= self.max_viewers:
                return None
        viewer = Viewer()
        self.viewers.add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        viewer.closed = True
        viewer.queue.clear()
        viewer.wakeup.set()
        self.viewers.discard(viewer)

    def close(self) -> None:
        """End every viewer's stream (shutdown)."""
        for viewer in list(self.viewers):
            self.unsubscribe(viewer)

    def publish(self, event: dict[str, object]) -> None:
        """Give the event to every viewer that has room; count it as dropped for the others."""
        self.seq += 1
        self.published += 1
        data = json.dumps(
            {"seq": self.seq, "time": round(time.time(), 3), **event}, separators=(",", ":")
        )
        for viewer in self.viewers:
            if len(viewer.queue) >= QUEUE_SIZE:
                viewer.missed += 1
                viewer.dropped += 1
                self.dropped += 1
                continue
            viewer.queue.append(data)
            viewer.wakeup.set()

    def __iter__(self) -> Iterator[Viewer]:
        return iter(self.viewers)


def _conn_fields(conn: Connection) -> dict[str, object]:
    fields: dict[str, object] = {
        "id": str(conn.id),
        "direction": conn.direction,
        "listener": conn.listener,
        "remote": join_host_port(*conn.remote),
        "local": join_host_port(*conn.local),
        "sni": conn.sni,
    }
    if conn.transport != "tls":  # WebSocket (a TLS connection's events stay as they were)
        fields["transport"] = conn.transport
    return fields


class FeedObserver:
    """The relay's ConnectionObserver: passes every event on to `inner` (tracing) first, then
    to the feed when anyone is watching."""

    def __init__(self, inner: ConnectionObserver, feed: EventFeed) -> None:
        self.inner = inner
        self.feed = feed

    def handshake_done(self, conn: Connection) -> MessageTracer | None:
        tracer = self.inner.handshake_done(conn)
        if self.feed.viewers:
            self.feed.publish(
                {
                    "event": "accepted" if conn.direction == "inbound" else "connected",
                    **_conn_fields(conn),
                    "tls_version": conn.tls_version,
                    "cipher": conn.cipher,
                    "resumed": conn.resumed,
                    "handshake_ms": round(conn.handshake_ms, 3) if conn.handshake_ms else None,
                    "traced": tracer is not None,
                }
            )
        return tracer

    def handshake_failed(self, conn: Connection, reason: HandshakeFailure, message: str) -> None:
        self.inner.handshake_failed(conn, reason, message)
        if self.feed.viewers:
            self.feed.publish(
                {
                    "event": "handshake_failed",
                    **_conn_fields(conn),
                    "reason": reason.value,
                    "message": message,
                }
            )

    def closed(self, conn: Connection, reason: CloseReason, traced: MessageTracer | None) -> None:
        self.inner.closed(conn, reason, traced)
        if self.feed.viewers:
            self.feed.publish(
                {
                    "event": "closed",
                    **_conn_fields(conn),
                    "reason": reason.label,
                    "message": reason.value,
                    "age_seconds": round(time.time() - conn.started, 3),
                    "bytes_in": conn.bytes_in,
                    "bytes_out": conn.bytes_out,
                    "messages_in": conn.msgs_in,
                    "messages_out": conn.msgs_out,
                }
            )
