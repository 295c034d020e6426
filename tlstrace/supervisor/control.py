"""`tlstrace.control.Control` for a sidecar of worker processes: each call asks every running
worker over its channel and merges the answers (`merge`); a connection's calls go to the worker
that owns it (named in its id: `worker_of`). Tracing switches and filters reach every running
worker before the answer, and are remembered for workers started later."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
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

log = logging.getLogger("tlstrace")


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

    async def resync(self, by: SwitchedBy) -> None: ...


#: seconds a worker has to answer a call that changes something (a filter, a connection)
CALL_TIMEOUT = 10.0
#: seconds a worker has to answer a read (/metrics, /readyz, the connection list, the
#: tracing state) and a tracing switch: a stuck worker must not hold the API; it is named
#: (and the heartbeat replaces it)
READ_TIMEOUT = 2.0
SWITCH_TIMEOUT = 5.0


class WorkersControl:
    def __init__(self, supervisor: Pool) -> None:
        self.sup = supervisor
        self._reload_lock = asyncio.Lock()
        self._reload_next: asyncio.Future[ReloadOutcome] | None = None
        self._reload_by = SwitchedBy("api", "the API")
        #: each slot's last counters, with the pid of the worker that gave them: a worker
        #: that does not answer a scrape counts with these
        self._last: dict[int, tuple[int, Counters]] = {}
        #: the counters of workers that died, summed (gauges left out): merged counters never
        #: fall when a worker dies
        self._retired: Counters | None = None
        self._retired_pids: set[int] = set()

    @property
    def config(self) -> Config:
        return self.sup.config

    @property
    def feed(self) -> EventFeed:
        return self.sup.feed

    async def _ask(
        self, method: str, *args: Any, timeout: float
    ) -> tuple[dict[int, Any], list[int]]:
        """Ask every running worker; the answers by worker index (exceptions included), and
        the workers that did not answer in time. A worker that died meanwhile is in neither."""
        workers = self.sup.running()
        results = await asyncio.gather(
            *(w.call(method, *args, timeout=timeout) for w in workers), return_exceptions=True
        )
        out: dict[int, Any] = {}
        late: list[int] = []
        for w, r in zip(workers, results, strict=True):
            if isinstance(r, asyncio.TimeoutError):
                late.append(w.index)
            elif not isinstance(r, ChannelClosed):
                out[w.index] = r
        if late:
            log.warning(
                "%s: worker(s) %s did not answer in %g s",
                method,
                ", ".join(map(str, late)),
                timeout,
                extra={"workers_not_answering": late},
            )
        return out, late

    async def _each(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> dict[int, Any]:
        """Ask every running worker; the answers by worker index (a worker that died or did
        not answer in time gives none). Other exceptions are raised."""
        out, _ = await self._ask(method, *args, timeout=timeout)
        for r in out.values():
            if isinstance(r, BaseException):
                raise r
        return out

    async def _one(self, method: str, *args: Any) -> Any:
        for w in self.sup.running():
            try:
                return await w.call(method, *args, timeout=READ_TIMEOUT)
            except (TimeoutError, ChannelClosed):
                continue
        raise ChannelClosed("no worker is running")

    def _no_worker_state(self) -> TraceStatus:
        want = self.sup.trace_wanted
        return TraceStatus(
            enabled=bool(want and want.on),
            destinations=(),
            keys=self.config.trace_keys,
            filter_rules=len(self.config.trace_filter),
            traced_connections=0,
            until=want.until if want else None,
        )

    async def trace_state(self) -> TraceStatus:
        answers, late = await self._ask("trace_state", timeout=READ_TIMEOUT)
        states = [a for a in answers.values() if isinstance(a, TraceStatus)]
        state = merge.trace_states(states) if states else self._no_worker_state()
        return dataclasses.replace(state, not_answering=tuple(late))

    async def switch_tracing(
        self, on: bool, for_seconds: float | None, by: SwitchedBy
    ) -> TraceStatus:
        """Every running worker switches (one wait of SWITCH_TIMEOUT at most); the answer is
        made of theirs, and names the workers that did not answer (they get the state when
        they answer again, or their replacement does)."""
        async with self.sup.state_lock:
            answers, late = await self._ask(
                "switch_tracing", on, for_seconds, by, timeout=SWITCH_TIMEOUT
            )
            if any(isinstance(a, NoDestination) for a in answers.values()):
                raise NoDestination("no HEP destination is configured (hep_id)")
            states = [a for a in answers.values() if isinstance(a, TraceStatus)]
            until = merge.trace_states(states).until if states else None
            if on and for_seconds and until is None:
                until = time.time() + for_seconds
            self.sup.set_trace_wanted(TraceWanted(on, until, by))
        state = merge.trace_states(states) if states else self._no_worker_state()
        return dataclasses.replace(state, not_answering=tuple(late))

    async def _each_settled(self, method: str, *args: Any) -> dict[int, Any]:
        """As `_each`, but exceptions are answers too."""
        out, _ = await self._ask(method, *args, timeout=CALL_TIMEOUT)
        return out

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
        lists = await self._each("connection_rows", direction, traced, limit, timeout=READ_TIMEOUT)
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
        answers = await self._each("destinations", timeout=READ_TIMEOUT)
        return merge.senders(list(answers.values()))

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
        answers, _ = await self._ask("reload", by, timeout=CALL_TIMEOUT)
        if not answers:
            return ReloadOutcome(False, "no worker is running")
        failed = {i: a for i, a in answers.items() if not (isinstance(a, ReloadOutcome) and a.ok)}
        await self.sup.resync(by)
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
        got, late = await self._ask("readiness", timeout=READ_TIMEOUT)
        for index, answer in got.items():
            if isinstance(answer, BaseException):
                raise answer
            answers[index] = answer
        for index in late:
            answers[index] = f"not answering (in {READ_TIMEOUT:g} s)"
        return merge.readiness(answers, len(self.sup.workers))

    def retire(self, index: int, pid: int | None) -> None:
        """The worker `pid` of slot `index` died: its last counters join the retired sum."""
        if pid is not None:
            self._retired_pids.add(pid)
        last = self._last.get(index)
        if last is None or last[0] != pid:
            return
        del self._last[index]
        dead = merge.retired(last[1])
        self._retired = (
            dead
            if self._retired is None
            else merge.counters([self._retired, dead], RelayStats(), self.sup.started)
        )

    async def counters(self) -> Counters:
        """The running workers' counters (a worker that does not answer in time counts with
        its last ones), those of the workers that died, and the supervisor's own, merged."""
        sup = self.sup
        workers = sup.running()
        pids = {w.index: w.pid for w in workers}
        answers, _ = await self._ask("counters", timeout=READ_TIMEOUT)
        for index, answer in answers.items():
            if isinstance(answer, BaseException):
                raise answer
            pid = pids.get(index)
            if pid is not None and pid not in self._retired_pids:
                self._last[index] = (pid, answer)
        got = [
            c
            for w in sup.workers
            if w.live
            for pid, c in [self._last.get(w.index, (None, None))]
            if c is not None and pid == w.pid
        ]
        live = bool(got)
        if self._retired is not None:
            got.append(self._retired)  # last: the build and certificates are a live one's
        if got:
            c = merge.counters(got, sup.stats, sup.started)
            if not live:  # only the dead workers' counters: nothing traces
                c.tracing = dataclasses.replace(c.tracing, enabled=False)
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
