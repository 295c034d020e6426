"""Reloads, coalesced and off the event loop.

A reload reads the configuration file, builds SSL contexts and parses certificates: tens of
milliseconds of work that would stop relaying if it ran in the event loop, and a SIGHUP storm
would stop it for good. So one reload runs at a time, its slow part in a worker thread, and
only the swap of what it built happens in the loop. Requests that arrive while a reload runs
are all answered by the next one, which reads the files as they are when it starts (the
latest request wins). Back-to-back reloads are spaced by four times the time the last one
took, so that a storm of requests keeps the worker thread (which competes with the loop for
the GIL) busy a fifth of the time at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger("tlstrace")

#: a reload that follows another waits this many times as long as the last one took (at most
#: _MAX_SECONDS of it)
_SPACING = 4.0
_MAX_SECONDS = 1.0

Prepared = TypeVar("Prepared")
Result = TypeVar("Result")


class Reloader(Generic[Prepared, Result]):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        prepare: Callable[[], Prepared],
        apply: Callable[[Prepared], Result],
        failed: Callable[[Exception], Result],
    ) -> None:
        """`prepare` runs in a worker thread and must not touch live state; `apply` runs in
        the loop; `failed` turns an exception from `prepare` into the answer."""
        self.loop = loop
        self.prepare = prepare
        self.apply = apply
        self.failed = failed
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlstrace-reload")
        self.waiters: list[asyncio.Future[Result]] = []
        self.task: asyncio.Task[None] | None = None
        #: requests received, and reloads run for them
        self.requests = 0
        self.runs = 0
        self.last_seconds = 0.0
        self.last_end = 0.0

    def request(self) -> asyncio.Future[Result]:
        """Ask for a reload; the future gets the result of the first reload that starts after
        this request."""
        self.requests += 1
        fut: asyncio.Future[Result] = self.loop.create_future()
        self.waiters.append(fut)
        if self.task is None:
            self.task = self.loop.create_task(self._run())
        return fut

    async def _run(self) -> None:
        try:
            while self.waiters:
                wait = self.last_end + _SPACING * self.last_seconds - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                waiters, self.waiters = self.waiters, []
                self.runs += 1
                if len(waiters) > 1:
                    log.debug("reload: %d requests answered by one reload", len(waiters))
                started = time.monotonic()
                try:
                    prepared = await self.loop.run_in_executor(self.executor, self.prepare)
                except Exception as e:  # any failure is this reload's answer
                    result = self.failed(e)
                else:
                    result = self.apply(prepared)
                self.last_end = time.monotonic()
                self.last_seconds = min(_MAX_SECONDS, self.last_end - started)
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self.task = None

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
