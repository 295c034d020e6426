"""Reloads, coalesced and off the event loop.

A reload reads the configuration file, builds SSL contexts and parses certificates: tens of
milliseconds of work that would stop relaying if it ran in the event loop, and a SIGHUP storm
would stop it for good. So one reload runs at a time, its slow part in a worker thread, and
only the swap of what it built happens in the loop. Requests that arrive while a reload runs
are all answered by the next one, which reads the files as they are when it starts (the
latest request wins). Back-to-back reloads are spaced by four times the time the last one
took, so that a storm of requests keeps the worker thread (which competes with the loop for
the GIL) busy a fifth of the time at most.

`watch_file` asks for a reload when the configuration file changes (`config_watch`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


#: seconds between two looks at a watched configuration file
WATCH_INTERVAL = 1.0

#: what identifies a version of a file: device, inode, size, modification time (ns); None
#: when the file cannot be read (missing, or a dangling symlink)
Signature = tuple[int, int, int, int] | None


def signature(path: Path) -> Signature:
    """The signature of the file `path` names now, following symlinks (a Kubernetes
    ConfigMap volume swaps the `..data` symlink to a new directory: the path then resolves
    to another inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """Decides, from the signatures seen one look after another, when a file changed: a new
    signature that stayed the same for one more look (a file being written is not read
    half-way), and not when the file went missing (the last good version stays in force)."""

    def __init__(self, first: Signature) -> None:
        self.current = first
        self.pending: Signature = first

    def look(self, seen: Signature) -> bool:
        """Whether this look shows a change to act on."""
        if seen is None or seen == self.current:
            self.pending = self.current
            return False
        if seen != self.pending:
            self.pending = seen  # changed: wait one look for it to settle
            return False
        self.current = seen
        return True


async def watch_file(
    path: Path,
    enabled: Callable[[], bool],
    changed: Callable[[], object],
    interval: float = WATCH_INTERVAL,
) -> None:
    """Call `changed` whenever the file at `path` changes while `enabled()` (the
    `config_watch` key, read at each look) says so; runs until cancelled."""
    watch = FileWatch(signature(path))
    while True:
        await asyncio.sleep(interval)
        seen = signature(path)
        if not enabled():
            watch = FileWatch(seen)  # switched on later: changes from then on
            continue
        if watch.look(seen):
            log.info("the configuration file %s changed: reloading", path)
            changed()
