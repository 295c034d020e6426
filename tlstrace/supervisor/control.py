"""`tlstrace.control.Control` for a sidecar of worker processes: each call asks every running
worker over its channel and merges the answers (`merge`); a connection's calls go to the worker
that owns it (its id's top byte). Tracing switches and filters reach every running worker
before the answer, and are remembered for workers started later."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

from tlstrace.config import Config
from tlstrace.control import (
    ConnectionView,
    Counters,
    Direction,
    NoDestination,
    Readiness,
    ReloadOutcome,
    SenderStats,
    SwitchedBy,
    TraceRules,
    TraceStatus,
    TracingCounters,
    WorkerProcess,
)
from tlstrace.feed import EventFeed
from tlstrace.relay.connection import worker_of
from tlstrace.relay.stats import RelayStats
from tlstrace.supervisor import merge
from tlstrace.supervisor.boot import TraceWanted, row_view
from tlstrace.supervisor.channel import ChannelClosed


class Worker(Protocol):
    """What the control plane sees of one worker slot (`pool.WorkerHandle`)."""

    index: int
    live: bool
    status: str
    pid: int | None

    async def call(self, method: str, *args: Any, timeout: float) -> Any: ...


class Pool(Protocol):
    """What the control plane needs of the supervisor (`pool.Supervisor`)."""

    config: Config
    feed: EventFeed
    stats: RelayStats
    started: float
    restarts: int
    trace_wanted: TraceWanted | None
    rules: TraceRules | None
    state_lock: asyncio.Lock

    @property
    def workers(self) -> Sequence[Worker]: ...

    def running(self) -> Sequence[Worker]: ...

    def set_trace_wanted(self, wanted: TraceWanted) -> None: ...

    def set_rules(self, rules: TraceRules) -> None: ...

    async def resync(self) -> None: ...


#: seconds a worker has to answer a call (a reload reads files and builds contexts)
CALL_TIMEOUT = 10.0
RELOAD_TIMEOUT = 60.0


class WorkersControl:
    def __init__(self, supervisor: Pool) -> None:
        self.sup = supervisor
        self._reload_lock = asyncio.Lock()
        self._reload_next: asyncio.Future[ReloadOutcome] | None = None
        self._reload_by = SwitchedBy("api", "the API")

    @property
    def config(self) -> Config:
        return self.sup.config

    @property
    def feed(self) -> EventFeed:
        return self.sup.feed

    async def _each(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> dict[int, Any]:
        """Ask every running worker; the answers by worker index (a worker that died
        meanwhile gives none). Other exceptions are raised."""
        workers = self.sup.running()
        results = await asyncio.gather(
            *(w.call(method, *args, timeout=timeout) for w in workers), return_exceptions=True
        )
        out: dict[int, Any] = {}
        for w, r in zip(workers, results, strict=True):
            if isinstance(r, (ChannelClosed, asyncio.TimeoutError)):
                continue
            if isinstance(r, BaseException):
                raise r
            out[w.index] = r
        return out

    async def _one(self, method: str, *args: Any) -> Any:
        for w in self.sup.running():
            try:
                return await w.call(method, *args, timeout=CALL_TIMEOUT)
            except (TimeoutError, ChannelClosed):
                continue
        raise ChannelClosed("no worker is running")

    async def trace_state(self) -> TraceStatus:
        states = list((await self._each("trace_state")).values())
        if not states:
            want = self.sup.trace_wanted
            return TraceStatus(
                enabled=bool(want and want.on),
                destinations=(),
                keys=self.config.trace_keys,
                filter_rules=len(self.config.trace_filter),
                traced_connections=0,
                until=want.until if want else None,
            )
        return merge.trace_states(states)

    async def switch_tracing(
        self, on: bool, for_seconds: float | None, by: SwitchedBy
    ) -> TraceStatus:
        async with self.sup.state_lock:
            answers = await self._each_settled("switch_tracing", on, for_seconds, by)
            if any(isinstance(a, NoDestination) for a in answers.values()):
                raise NoDestination("no HEP destination is configured (hep_id)")
            states = [a for a in answers.values() if isinstance(a, TraceStatus)]
            until = merge.trace_states(states).until if states else None
            if on and for_seconds and until is None:
                until = time.time() + for_seconds
            self.sup.set_trace_wanted(TraceWanted(on, until, by))
        return await self.trace_state()

    async def _each_settled(self, method: str, *args: Any) -> dict[int, Any]:
        """As `_each`, but exceptions are answers too."""
        workers = self.sup.running()
        results = await asyncio.gather(
            *(w.call(method, *args, timeout=CALL_TIMEOUT) for w in workers),
            return_exceptions=True,
        )
        return {
            w.index: r
            for w, r in zip(workers, results, strict=True)
            if not isinstance(r, (ChannelClosed, asyncio.TimeoutError))
        }

    async def trace_filter(self) -> TraceRules:
        try:
            rules: TraceRules = await self._one("trace_filter")
        except ChannelClosed:
            return self.sup.rules or TraceRules(
                list(self.config.trace_filter), self.config.trace_filter_default
            )
        return rules

    async def set_trace_filter(self, rules: TraceRules) -> TraceRules:
        async with self.sup.state_lock:
            await self._each("set_trace_filter", rules)
            self.sup.set_rules(rules)
        return await self.trace_filter()

    async def connections(
        self, direction: Direction | None = None, traced: bool | None = None, limit: int = 1000
    ) -> list[ConnectionView]:
        lists = await self._each("connection_rows", direction, traced, limit)
        merged = [row_view(row) for rows in lists.values() for row in rows]
        merged.sort(key=lambda c: c.started)
        return merged[:limit]

    def _owner(self, conn_id: int) -> Worker | None:
        index = worker_of(conn_id)
        for w in self.sup.running():
            if w.index == index:
                return w
        return None

    async def connection(self, conn_id: int) -> ConnectionView | None:
        w = self._owner(conn_id)
        if w is None:
            return None
        try:
            view: ConnectionView | None = await w.call("connection", conn_id, timeout=CALL_TIMEOUT)
        except (TimeoutError, ChannelClosed):
            return None
        return view

    async def close_connection(self, conn_id: int) -> bool:
        w = self._owner(conn_id)
        if w is None:
            return False
        try:
            closed: bool = await w.call("close_connection", conn_id, timeout=CALL_TIMEOUT)
        except (TimeoutError, ChannelClosed):
            return False
        return closed

    async def destinations(self) -> list[SenderStats]:
        return merge.senders(list((await self._each("destinations")).values()))

    async def reload(self, by: SwitchedBy) -> ReloadOutcome:
        """Every worker reloads; requests that come while a reload runs are answered by the
        next one (coalesced, as a single process does; the latest names it)."""
        self._reload_by = by
        if self._reload_next is None:
            self._reload_next = asyncio.ensure_future(self._next_reload())
        return await asyncio.shield(self._reload_next)

    async def _next_reload(self) -> ReloadOutcome:
        async with self._reload_lock:  # after the one running, if any
            self._reload_next = None  # requests from now on wait for another
            return await self._reload_all(self._reload_by)

    async def _reload_all(self, by: SwitchedBy) -> ReloadOutcome:
        answers = await self._each_settled("reload", by)
        if not answers:
            return ReloadOutcome(False, "no worker is running")
        failed = {i: a for i, a in answers.items() if not (isinstance(a, ReloadOutcome) and a.ok)}
        await self.sup.resync()
        if failed:
            text = "; ".join(
                f"worker {i}: {a.message if isinstance(a, ReloadOutcome) else a}"
                for i, a in sorted(failed.items())
            )
            return ReloadOutcome(False, text)
        first: ReloadOutcome = answers[min(answers)]
        return first

    async def readiness(self) -> Readiness:
        answers: dict[int, Readiness | str] = {
            w.index: w.status for w in self.sup.workers if not w.live
        }
        answers.update(await self._each("readiness"))
        return merge.readiness(answers, len(self.sup.workers))

    async def counters(self) -> Counters:
        sup = self.sup
        got = list((await self._each("counters")).values())
        if got:
            c = merge.counters(got, sup.stats, sup.started)
        else:
            c = Counters(
                started=sup.started,
                stats=sup.stats,
                open_connections={},
                bytes_relayed={},
                trunk_tables={},
                upstreams=[],
                tracing=TracingCounters(False, 0, {}, 0),
                destinations=[],
                certificates=[],
            )
        c.workers_running = sum(1 for w in sup.workers if w.live)
        c.worker_restarts = sup.restarts
        c.worker_processes = [
            p
            for w in sup.workers
            if w.live and w.pid is not None
            for p in [process_usage(w.index, w.pid)]
            if p is not None
        ]
        return c


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_usage(index: int, pid: int) -> WorkerProcess | None:
    """CPU (user + system) and resident memory of a worker, from /proc (Linux); None when it
    cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command: state is field 3, utime 14, stime 15, rss 24 (proc(5))
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    return WorkerProcess(index, pid, cpu, int(fields[21]) * _PAGE)


__all__ = ["RelayStats", "WorkersControl"]
