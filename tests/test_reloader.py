"""Reload coalescing, without a relay: one reload at a time, in a worker thread; requests made
while one runs are all answered by the next one, which starts after them."""

from __future__ import annotations

import asyncio
import threading

from tlstrace.reloader import Reloader


def test_requests_during_a_reload_share_the_next_one() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = threading.Event()
        release = threading.Event()
        threads: list[str] = []
        generation = 0

        def prepare() -> int:
            nonlocal generation
            threads.append(threading.current_thread().name)
            generation += 1
            started.set()
            release.wait(5)
            return generation

        applied: list[int] = []

        def apply(gen: int) -> tuple[bool, str]:
            applied.append(gen)
            return True, f"reload {gen}"

        reloader: Reloader[int, tuple[bool, str]]
        reloader = Reloader(loop, prepare, apply, lambda e: (False, str(e)))
        first = reloader.request()
        await loop.run_in_executor(None, started.wait, 5)
        # a storm while the first reload runs: all of it is answered by one more reload
        storm = [reloader.request() for _ in range(100)]
        release.set()
        assert await first == (True, "reload 1")
        assert {await f for f in storm} == {(True, "reload 2")}
        assert applied == [1, 2] and reloader.runs == 2 and reloader.requests == 101
        assert threading.current_thread().name not in threads

        # a failure is the answer, and the next request reloads again
        def broken() -> int:
            raise ValueError("bad file")

        reloader.prepare = broken
        assert await reloader.request() == (False, "bad file")
        reloader.close()

    asyncio.run(main())
