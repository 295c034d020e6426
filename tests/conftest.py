from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import SipBackend
from tests.support.pki import Pki
from tests.support.relay import RelayProcess


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def backend() -> Iterator[SipBackend]:
    with SipBackend() as b:
        yield b


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start `tlstrace run` processes; all are stopped at the end of the test."""
    started: list[RelayProcess] = []

    def start(config: dict[str, Any], **kw: Any) -> RelayProcess:
        r = RelayProcess(tmp_path / f"relay{len(started)}", config, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def relay(relay_factory: Callable[..., RelayProcess], backend: SipBackend) -> RelayProcess:
    """tlstrace with one TLS listener in front of `backend`, on the generated certificate."""
    return relay_factory({"listener": [RelayProcess.tls_listener(backend.port)]})
