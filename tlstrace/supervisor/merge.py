"""Merging the workers' answers into one, as `/metrics` and the API show them: counters and
histograms summed, open connections summed, the build and certificates once."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from typing import Any

from tlstrace.control import (
    Counters,
    Histogram,
    Readiness,
    RelayStats,
    SenderStats,
    TraceStatus,
    TracingCounters,
    Upstream,
)


def _add(into: Any, value: Any) -> Any:
    """`into` with `value` added, field by field (counters, histograms, nested dicts, ints)."""
    if isinstance(into, Histogram):
        for i, n in enumerate(value.counts):
            into.counts[i] += n
        into.sum += value.sum
        return into
    if isinstance(into, Counter):
        into.update(value)  # keeps the series at 0 (`+` would drop them)
        return into
    if isinstance(into, dict):
        for key, v in value.items():
            if key in into:
                into[key] = _add(into[key], v)
            else:
                into[key] = copy.deepcopy(v)
        return into
    if isinstance(into, (int, float)) and not isinstance(into, bool):
        return into + value
    return into  # lists and the rest: the first one's


def relay_stats(all_stats: list[RelayStats]) -> RelayStats:
    out = copy.deepcopy(all_stats[0])
    for st in all_stats[1:]:
        for f in dataclasses.fields(RelayStats):
            setattr(out, f.name, _add(getattr(out, f.name), getattr(st, f.name)))
    return out


def senders(groups: list[list[SenderStats]]) -> list[SenderStats]:
    """Each destination once, its counters summed; connected only when every worker's is."""
    by_name: dict[str, SenderStats] = {}
    for group in groups:
        for s in group:
            seen = by_name.get(s.name)
            if seen is None:
                by_name[s.name] = s
                continue
            changes: dict[str, Any] = {}
            for f in dataclasses.fields(s):
                a, b = getattr(seen, f.name), getattr(s, f.name)
                if isinstance(a, bool):
                    changes[f.name] = a and b
                elif isinstance(a, (int, float)):
                    changes[f.name] = a + b
            by_name[s.name] = dataclasses.replace(seen, **changes)
    return list(by_name.values())


def counters(all_counters: list[Counters], own: RelayStats, started: float) -> Counters:
    """The workers' counters as one process's, with the supervisor's own (`own`: the API's
    refusals and time-outs) added."""
    first = all_counters[0]
    stats = relay_stats([*(c.stats for c in all_counters), own])
    open_: dict[tuple[str, str], int] = {}
    relayed: dict[tuple[str, str], int] = {}
    tables: dict[str, tuple[int, int]] = {}
    upstreams: dict[tuple[str, str], bool] = {}
    oversize: Counter[str] = Counter()
    for c in all_counters:
        _add(open_, c.open_connections)
        _add(relayed, c.bytes_relayed)
        for name, (n, ev) in c.trunk_tables.items():
            had = tables.get(name, (0, 0))
            tables[name] = (had[0] + n, had[1] + ev)
        for u in c.upstreams:
            # up only when every worker's last attempt worked
            upstreams[u.endpoint, u.role] = upstreams.get((u.endpoint, u.role), True) and u.ok
        oversize.update(c.tracing.oversize)
    return Counters(
        started=started,
        stats=stats,
        open_connections=open_,
        bytes_relayed=relayed,
        trunk_tables=tables,
        upstreams=[Upstream(e, role, ok) for (e, role), ok in upstreams.items()],
        tracing=TracingCounters(
            # as GET /api/trace says: on when every worker traces
            enabled=all(c.tracing.enabled for c in all_counters),
            packets=sum(c.tracing.packets for c in all_counters),
            oversize=dict(oversize),
            keylog_errors=sum(c.tracing.keylog_errors for c in all_counters),
        ),
        destinations=senders([c.destinations for c in all_counters]),
        certificates=first.certificates,
    )


def retired(c: Counters) -> Counters:
    """What stays of a worker that died in the merged counters: its counters and histograms;
    its gauges (connections open, queues, table entries) at 0 and its states neutral (tracing
    and destinations count as on and connected: the others' decide)."""
    return Counters(
        started=c.started,
        stats=copy.deepcopy(c.stats),
        open_connections=dict.fromkeys(c.open_connections, 0),
        bytes_relayed=dict(c.bytes_relayed),
        trunk_tables={name: (0, ev) for name, (_, ev) in c.trunk_tables.items()},
        upstreams=[],
        tracing=TracingCounters(
            True, c.tracing.packets, dict(c.tracing.oversize), c.tracing.keylog_errors
        ),
        destinations=[
            dataclasses.replace(s, queue_depth=0, queue_bytes=0, buffered_bytes=0, connected=True)
            for s in c.destinations
        ],
        certificates=c.certificates,
    )


def trace_states(states: list[TraceStatus]) -> TraceStatus:
    """On when every worker traces; the connections traced summed; the earliest limit."""
    first = states[0]
    untils = [s.until for s in states if s.until is not None]
    return dataclasses.replace(
        first,
        enabled=all(s.enabled for s in states),
        traced_connections=sum(s.traced_connections for s in states),
        until=min(untils) if untils else None,
    )


def readiness(answers: dict[int, Readiness | str], workers: int) -> Readiness:
    """Ready when every worker runs and is ready; a listener is up when it is up in every
    worker; `worker N` says how each one is."""
    checks: dict[str, str] = {}
    ready = True
    for index in range(workers):
        answer = answers.get(index, "not running")
        if isinstance(answer, str):
            checks[f"worker {index}"] = answer
            ready = False
            continue
        checks[f"worker {index}"] = "up"
        ready = ready and answer.ready
        for name, value in answer.checks.items():
            had = checks.get(name)
            if had is None or had in ("up", "reachable"):
                checks[name] = value
    return Readiness(ready, checks)
