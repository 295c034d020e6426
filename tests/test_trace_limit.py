"""Tracing for a while (PUT /api/trace's `for_seconds`, the file's `trace_on_for_seconds`) and
JSON bodies sent as curl sends them, against the running sidecar."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


@pytest.fixture
def sidecar(relay_factory: Factory, backend: SipBackend, sink: HepSink) -> RelayProcess:
    return relay_factory(
        {"hep_id": [sink.hep_id], "listener": [RelayProcess.tls_listener(backend.port)]}
    )


def api(relay: RelayProcess) -> httpx.Client:
    return httpx.Client(base_url=relay.api_url, timeout=10)


def wait_off(http: httpx.Client, timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state: dict[str, object] = http.get("/api/trace").json()
        if state["tracing"] == "off":
            return state
        time.sleep(0.1)
    raise AssertionError("tracing did not switch itself off")


def sip_traced(relay: RelayProcess, sink: HepSink, call_id: str) -> bool:
    with TlsClient(relay.port()) as client:
        client.send(request(call_id=call_id))
        client.recv_messages(1)
    sink.settle(0.3)
    return call_id.encode() in {p.correlation_id for p in sink.packets(1)}


def test_tracing_for_a_while_switches_itself_off(sidecar: RelayProcess, sink: HepSink) -> None:
    http = api(sidecar)
    before = time.time()
    r = http.put("/api/trace", json={"tracing": "on", "for_seconds": 1.5})
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["tracing"] == "on"
    until = datetime.fromisoformat(state["until"]).timestamp()
    assert before - 1 <= until <= time.time() + 1.5 + 1  # UTC, whole seconds
    assert 0 <= state["remaining_seconds"] <= 1.5
    assert http.get("/api/trace").json()["until"] == state["until"]
    assert sip_traced(sidecar, sink, "while-on@t")

    off = wait_off(http)
    assert off["until"] is None and off["remaining_seconds"] is None
    sidecar.wait_log("tracing switched off: its 1.5s limit ran out")
    assert not sip_traced(sidecar, sink, "after-limit@t")


def test_a_switch_without_a_limit_removes_it(sidecar: RelayProcess) -> None:
    http = api(sidecar)
    assert http.put("/api/trace", json={"tracing": "on", "for_seconds": 0.5}).json()["until"]
    state = http.put("/api/trace", json={"tracing": "on"}).json()
    assert state["tracing"] == "on" and state["until"] is None
    time.sleep(1.5)
    assert http.get("/api/trace").json()["tracing"] == "on"
    # off, then on for a while: the new limit is the one in force
    http.put("/api/trace", json={"tracing": "off"})
    assert http.put("/api/trace", json={"tracing": "on", "for_seconds": 3600}).json()["until"]
    assert http.put("/api/trace", json={"tracing": "off"}).json()["until"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"tracing": "on", "for_seconds": 0},
        {"tracing": "on", "for_seconds": -5},
        {"tracing": "on", "for_seconds": "ten"},
        {"tracing": "on", "for_seconds": 1e12},
        {"tracing": "off", "for_seconds": 60},
    ],
)
def test_bad_limits_are_refused(sidecar: RelayProcess, body: dict[str, object]) -> None:
    http = api(sidecar)
    r = http.put("/api/trace", json=body)
    assert r.status_code == 422, r.text
    assert http.get("/api/trace").json()["tracing"] == "off"


def test_the_file_can_limit_trace_on(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(
        {
            "hep_id": [sink.hep_id],
            "trace_on": True,
            "trace_on_for_seconds": 1,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    http = api(relay)
    state = http.get("/api/trace").json()
    assert state["tracing"] == "on" and state["until"]
    wait_off(http)
    relay.wait_log("its 1s limit ran out")


def curl(relay: RelayProcess, *args: str) -> tuple[int, str]:
    """curl as an operator types it; (status, body)."""
    r = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    body, _, status = r.stdout.rpartition("\n")
    return int(status), body


def test_json_bodies_without_the_json_content_type(sidecar: RelayProcess) -> None:
    url = f"{sidecar.api_url}/api/trace"
    # curl -d sends content-type application/x-www-form-urlencoded
    status, body = curl(sidecar, "-X", "PUT", url, "-d", '{"tracing":"on","for_seconds":600}')
    assert status == 200, body
    assert json.loads(body)["tracing"] == "on"
    status, body = curl(
        sidecar, "-X", "PUT", url, "-H", "content-type: text/plain", "-d", '{"tracing":"off"}'
    )
    assert (status, json.loads(body)["tracing"]) == (200, "off")
    status, body = curl(
        sidecar, "-X", "PUT", url, "-H", "content-type:", "-d", '{"tracing":"on"}'
    )  # no content-type at all
    assert (status, json.loads(body)["tracing"]) == (200, "on")
    status, body = curl(
        sidecar,
        "-X",
        "PUT",
        f"{sidecar.api_url}/api/trace/filters",
        "-d",
        '{"rules": [{"action": "deny", "remote": "10.0.0.0/8"}]}',
    )
    assert status == 200, body

    # not JSON: the answer says what is missing
    status, body = curl(sidecar, "-X", "PUT", url, "-d", "tracing=on")
    assert status == 422
    (problem,) = json.loads(body)["detail"]
    assert "content-type: application/json" in problem["msg"]
    assert "application/x-www-form-urlencoded" in problem["msg"]
    # a JSON content type with a broken body is still FastAPI's own answer
    status, body = curl(
        sidecar, "-X", "PUT", url, "-H", "content-type: application/json", "-d", "{"
    )
    assert status == 422
    assert api(sidecar).get("/api/trace").json()["tracing"] == "on"
