"""The event feed's bounds, without a relay: a full viewer loses events (counted, and told
how many), never holds up the others, and is let go when a new viewer needs its place."""

from __future__ import annotations

import asyncio
import json

from tlstrace.feed import QUEUE_SIZE, EventFeed


def test_a_full_viewer_loses_events_counted_and_the_others_get_them() -> None:
    async def run() -> None:
        feed = EventFeed()
        slow, fast = feed.subscribe(), feed.subscribe()
        assert slow is not None and fast is not None
        got = 0
        for i in range(QUEUE_SIZE + 10):
            feed.publish({"event": "closed", "n": i})
            got += len(fast.take()[0])
        assert got == QUEUE_SIZE + 10
        assert slow.stalled and feed.dropped == 10 and slow.dropped == 10
        events, missed = slow.take()
        assert len(events) == QUEUE_SIZE and missed == 10
        assert [json.loads(e)["n"] for e in events] == list(range(QUEUE_SIZE))
        assert slow.take() == ([], 0)
        assert feed.published == QUEUE_SIZE + 10

    asyncio.run(run())


def test_a_stalled_viewer_makes_room_for_a_new_one() -> None:
    async def run() -> None:
        feed = EventFeed(max_viewers=2)
        a, b = feed.subscribe(), feed.subscribe()
        assert a is not None and b is not None
        assert feed.subscribe() is None  # full, and nobody is stalled
        for _ in range(QUEUE_SIZE):
            feed.publish({"event": "accepted"})
        b.take()
        c = feed.subscribe()  # a is stalled: it goes
        assert c is not None and a.closed and a.wakeup.is_set()
        assert set(feed) == {b, c}
        feed.close()
        assert b.closed and c.closed and not feed.viewers

    asyncio.run(run())
