from __future__ import annotations

import pytest

from tests.core.harness import FakeClock, Observer, Pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("core-pki"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def observer() -> Observer:
    return Observer()
