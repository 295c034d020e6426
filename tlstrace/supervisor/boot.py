"""What the supervisor gives a worker when it starts it: plain, picklable data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlstrace.config import Config, Overrides
from tlstrace.control import TraceRules
from tlstrace.trace.tracer import SwitchedBy


@dataclass(frozen=True, slots=True)
class TraceWanted:
    """The tracing state every worker is to have: `until` (time.time()) when it is limited."""

    on: bool
    until: float | None
    by: SwitchedBy


@dataclass(frozen=True, slots=True)
class WorkerBoot:
    index: int
    config: Config
    config_path: Path | None
    overrides: Overrides | None
    #: (host, port) of each listener -> the inherited descriptor
    listeners: dict[tuple[str, int], int]
    trace: TraceWanted | None
    rules: TraceRules | None
