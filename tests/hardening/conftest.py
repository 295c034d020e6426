"""Fixtures of the hardening suite: legitimate traffic that is always stopped, and the figures
each case measured (written as JSON lines to $TLSTRACE_HARDENING_REPORT when it is set, for
docs/hardening.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.hardening.harness import LegitTraffic

Record = Callable[..., None]


@pytest.fixture(scope="session")
def figures() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    yield records
    path = os.environ.get("TLSTRACE_HARDENING_REPORT")
    if path and records:
        with open(path, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


@pytest.fixture
def record(figures: list[dict[str, Any]], request: pytest.FixtureRequest) -> Record:
    """record(**figures): what this case measured."""

    def add(**values: Any) -> None:
        figures.append({"case": request.node.name, **values})

    return add


@pytest.fixture
def legit() -> Iterator[Callable[..., LegitTraffic]]:
    """legit(port, **options): start legitimate traffic; it is stopped at the end anyway."""
    started: list[LegitTraffic] = []

    def start(port: int, **options: Any) -> LegitTraffic:
        traffic = LegitTraffic(port, **options)
        started.append(traffic)
        return traffic.start()

    yield start
    for t in started:
        t.stop()
