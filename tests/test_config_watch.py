"""`config_watch`: tlstrace reloads when its configuration file changes (a plain rewrite, or a
Kubernetes ConfigMap's `..data` symlink swap), as SIGHUP does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess, to_toml
from tlstrace.reloader import FileWatch, signature

Factory = Callable[..., RelayProcess]


# -- the decision, without a process -----------------------------------------------------------


def test_a_change_counts_once_it_stayed_the_same_for_one_more_look() -> None:
    w = FileWatch((1, 10, 100, 5))
    assert not w.look((1, 10, 100, 5))
    assert not w.look((1, 10, 120, 6))  # being written
    assert not w.look((1, 10, 140, 7))  # still
    assert w.look((1, 10, 140, 7))  # settled: one reload
    assert not w.look((1, 10, 140, 7))
    assert not w.look((1, 11, 140, 7))  # a new inode (a symlink swap) is a change too
    assert w.look((1, 11, 140, 7))


def test_a_missing_file_keeps_what_is_in_force() -> None:
    w = FileWatch((1, 10, 100, 5))
    assert not w.look(None)
    assert not w.look(None)
    assert not w.look((1, 10, 100, 5))  # back as it was: nothing to do
    assert not w.look(None)
    assert not w.look((1, 12, 100, 5))
    assert w.look((1, 12, 100, 5))


def test_the_signature_follows_symlinks(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.write_text("x = 1\n")
    b.write_text("x = 1\n")
    link = tmp_path / "link"
    link.symlink_to(a)
    first = signature(link)
    assert first == signature(a)
    tmp = tmp_path / "tmp"
    tmp.symlink_to(b)
    os.replace(tmp, link)
    assert signature(link) == signature(b) != first
    link.unlink()
    link.symlink_to(tmp_path / "gone")
    assert signature(link) is None


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def tracing(relay: RelayProcess) -> str:
    return str(httpx.get(f"{relay.api_url}/api/trace", timeout=10).json()["tracing"])


def wait_tracing(relay: RelayProcess, want: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while tracing(relay) != want:
        assert time.monotonic() < deadline, relay.log
        time.sleep(0.1)


def base(backend: SipBackend, sink: HepSink, **extra: Any) -> dict[str, Any]:
    return {
        "config_watch": True,
        "hep_id": [sink.hep_id],
        "listener": [RelayProcess.tls_listener(backend.port)],
        **extra,
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_editing_the_file_reloads(
    workers: int, relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(base(backend, sink, workers=workers))
    relay.wait_log("listening on")
    assert tracing(relay) == "off"
    relay.config_path.write_text(to_toml({**relay.config, "trace_on": True}))
    wait_tracing(relay, "on")
    log = relay.wait_log("changed: reloading")
    assert log.count("changed: reloading") == 1
    if workers > 1:
        relay.wait_log("[worker 1]: reloaded:")
        relay.wait_log("[worker 0]: reloaded:")
    relay.config_path.write_text(to_toml({**relay.config, "trace_on": False}))
    wait_tracing(relay, "off")


def test_a_configmap_symlink_swap_reloads(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, tmp_path: Path
) -> None:
    """The layout a ConfigMap volume has: FILE -> ..data/FILE, ..data -> ..<timestamp>/; an
    update writes a new timestamped directory and renames a new ..data symlink over the old."""
    config = base(backend, sink)
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(version: int, data: dict[str, Any]) -> None:
        d = mount / f"..2026_12_02_00_00_0{version}"
        d.mkdir()
        (d / "tlstrace.toml").write_text(to_toml(data))
        tmp = mount / "..data_tmp"
        tmp.symlink_to(d.name)
        os.replace(tmp, mount / "..data")

    full = {
        "state_dir": str(tmp_path / "state"),
        "api_listen": f"127.0.0.1:{_free_port()}",
        **config,
    }
    publish(1, full)
    (mount / "tlstrace.toml").symlink_to("..data/tlstrace.toml")
    relay = relay_factory(full, args=["--config", str(mount / "tlstrace.toml")])
    relay.wait_log("listening on")
    assert tracing(relay) == "off"
    publish(2, {**full, "trace_on": True})
    wait_tracing(relay, "on")
    assert f"{mount / 'tlstrace.toml'} changed: reloading" in relay.log


def test_without_config_watch_a_change_waits_for_sighup(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(base(backend, sink, config_watch=False))
    relay.wait_log("listening on")
    relay.config_path.write_text(to_toml({**relay.config, "trace_on": True}))
    time.sleep(3)
    assert tracing(relay) == "off"
    assert "changed: reloading" not in relay.log


def _free_port() -> int:
    from tests.support.net import free_port

    return free_port()
