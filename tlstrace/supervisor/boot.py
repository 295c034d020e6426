"""What the supervisor gives a worker when it starts it, and the row form of a connection
view: plain, picklable data."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from tlstrace.config import Config, Overrides
from tlstrace.control import ConnectionView, TraceRules
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
    #: how many processes the slot had before this one (its connection ids differ by it)
    generation: int = 0


_VIEW_FIELDS = tuple(f.name for f in fields(ConnectionView))


def view_row(view: ConnectionView) -> tuple[object, ...]:
    """A connection view as a tuple of its fields, in their order."""
    return tuple(getattr(view, name) for name in _VIEW_FIELDS)


def row_view(row: tuple[object, ...]) -> ConnectionView:
    return ConnectionView(*row)  # type: ignore[arg-type]
