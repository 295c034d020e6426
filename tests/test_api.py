"""The REST API against the running sidecar, with a real HTTP client: tracing switches what a
HEP receiver gets, filters round-trip, connections are listed and closed, the token is
enforced, bad input gets 4xx, and schemathesis finds no server error in the OpenAPI schema."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]
TOKEN = "s3cret-token"


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


@pytest.fixture
def sidecar(relay_factory: Factory, backend: SipBackend, sink: HepSink) -> RelayProcess:
    return relay_factory(
        {"hep_id": [sink.hep_id], "listener": [RelayProcess.tls_listener(backend.port)]}
    )


def api(relay: RelayProcess, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=relay.api_url, headers=headers, timeout=10)


def raw_get(relay: RelayProcess, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (an HTTP client would resolve dot segments first)."""
    host, port = relay.config["api_listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_switching_tracing_changes_what_reaches_the_receiver(
    sidecar: RelayProcess, sink: HepSink
) -> None:
    http = api(sidecar)
    assert http.get("/api/trace").json()["tracing"] == "off"
    early = TlsClient(sidecar.port())
    early.send(request(call_id="before@t"))
    early.recv_messages(1)
    time.sleep(0.3)
    assert sink.datagrams == []

    r = http.put("/api/trace", json={"tracing": "on"})
    assert r.status_code == 200 and r.json()["tracing"] == "on"
    assert r.json()["traced_connections"] == 1  # the open connection is traced from now on
    early.send(request(call_id="during@t", cseq=2))
    early.recv_messages(1)
    with TlsClient(sidecar.port()) as late:
        late.send(request(call_id="new@t"))
        late.recv_messages(1)
    sink.wait(4, 1)
    sip = {p.correlation_id for p in sink.packets(1)}
    assert sip == {b"during@t", b"new@t"}
    # the new connection's handshake is traced, the early one's is in the past
    accepted = [json.loads(p.payload) for p in sink.packets(89)]
    assert [e["Event"] for e in accepted if e["Event"] == "ACCEPTED"] == ["ACCEPTED"]

    assert http.put("/api/trace", json={"tracing": "off"}).json()["tracing"] == "off"
    sink.settle(0.3)
    count = len(sink.datagrams)
    early.send(request(call_id="after@t", cseq=3))
    early.recv_messages(1)
    early.close_notify()
    time.sleep(0.5)
    assert len(sink.datagrams) == count


def test_filters_round_trip_and_bad_ones_are_refused(sidecar: RelayProcess) -> None:
    http = api(sidecar)
    assert http.get("/api/trace/filters").json() == {"rules": [], "default": "allow"}
    rules = {
        "rules": [
            {"action": "deny", "remote": "10.0.0.0/8"},
            {"action": "allow", "sni": "*.example.com", "direction": "inbound"},
        ],
        "default": "deny",
    }
    r = http.put("/api/trace/filters", json=rules)
    assert r.status_code == 200
    got = http.get("/api/trace/filters").json()
    assert got["default"] == "deny"
    assert [(x["action"], x["remote"], x["sni"]) for x in got["rules"]] == [
        ("deny", "10.0.0.0/8", None),
        ("allow", None, "*.example.com"),
    ]
    for bad in (
        {"rules": [{"action": "maybe"}]},
        {"rules": [{"action": "deny", "remote": "10.0.0.0/99"}]},
        {"rules": [{"action": "deny", "remote_port": 70000}]},
        {"rules": [{"action": "deny", "colour": "red"}]},
        {"rules": "all"},
    ):
        r = http.put("/api/trace/filters", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"]
    assert http.get("/api/trace/filters").json() == got  # the old rules stay


def test_connections_listed_and_closed(sidecar: RelayProcess) -> None:
    http = api(sidecar)
    with TlsClient(sidecar.port(), server_hostname="phone.example") as client:
        client.send(request(call_id="listed@t", body=b"x" * 100))
        client.recv_messages(1)
        conns = http.get("/api/connections").json()
        assert len(conns) == 1
        c = conns[0]
        assert c["remote"] == f"127.0.0.1:{client.local_port}"
        assert c["local"] == f"127.0.0.1:{sidecar.port()}"
        assert (c["sni"], c["tls_version"], c["direction"]) == (
            "phone.example",
            "TLSv1.3",
            "inbound",
        )
        assert c["messages_in"] == 1 and c["messages_out"] == 1 and not c["traced"]
        assert c["bytes_in"] == len(request(call_id="listed@t", body=b"x" * 100))
        detail = http.get(f"/api/connections/{c['id']}").json()
        assert detail["local_certificate"]["subject"] == "/O=tlstrace self-signed/CN=localhost"
        assert "PRIVATE" not in json.dumps(detail) and "keylog" not in json.dumps(detail)
        assert http.delete(f"/api/connections/{c['id']}").status_code == 204
        assert client.wait_closed()
    sidecar.wait_log("closed: Closed by API")
    assert http.get("/api/connections").json() == []
    assert http.get(f"/api/connections/{c['id']}").status_code == 404
    assert http.delete(f"/api/connections/{c['id']}").status_code == 404


def test_destinations_and_reload(sidecar: RelayProcess) -> None:
    http = api(sidecar)
    (dest,) = http.get("/api/destinations").json()
    assert dest["name"] == "sink" and dest["transport"] == "udp"
    r = http.post("/api/reload")
    assert r.status_code == 200 and r.json()["reloaded"]
    sidecar.config_path.write_text(sidecar.config_path.read_text() + "\nbogus = 1\n")
    r = http.post("/api/reload")
    assert r.status_code == 409 and "bogus" in r.json()["message"]
    assert http.get("/healthz").json() == {"status": "ok"}


def test_token_is_enforced(relay_factory: Factory, backend: SipBackend) -> None:
    relay = relay_factory(
        {"api_token": TOKEN, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    anonymous, wrong, good = api(relay), api(relay, "nope"), api(relay, TOKEN)
    for path in ("/api/trace", "/api/connections", "/metrics", "/api/destinations"):
        assert anonymous.get(path).status_code == 401, path
        assert wrong.get(path).status_code == 401, path
        assert good.get(path).status_code == 200, path
    # the documentation describes the API and exposes nothing: it opens without the token
    for path in (
        "/docs",
        "/redoc",
        "/openapi.json",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/redoc.standalone.js",
    ):
        assert anonymous.get(path).status_code == 200, path
    # ... but nothing else hides behind the docs' paths
    for path in (
        "/docs/static/../../api/trace",
        "/docs/static/%2e%2e/%2e%2e/api/trace",
        "/docs/api/trace",
        "/openapi.json/../api/trace",
    ):
        status, _ = raw_get(relay, path)
        assert status in (401, 404), path
    assert anonymous.get("/api/trace").headers["www-authenticate"].startswith("Bearer")
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert TOKEN not in relay.log


def test_token_from_the_environment(relay_factory: Factory, backend: SipBackend) -> None:
    relay = relay_factory(
        {"listener": [RelayProcess.tls_listener(backend.port)]}, env={"TLSTRACE_API_TOKEN": TOKEN}
    )
    assert api(relay).get("/api/trace").status_code == 401
    assert api(relay, TOKEN).get("/api/trace").status_code == 200


def test_readiness_follows_the_backend(relay_factory: Factory) -> None:
    backend = SipBackend()
    relay = relay_factory({"listener": [RelayProcess.tls_listener(backend.port)]})
    http = api(relay)
    assert http.get("/readyz").json()["ready"]
    backend.stop()
    r = http.get("/readyz")
    assert r.status_code == 503 and not r.json()["ready"]


def test_bad_input_is_4xx(sidecar: RelayProcess) -> None:
    http = api(sidecar)
    cases = [
        ("PUT", "/api/trace", {"tracing": "maybe"}),
        ("PUT", "/api/trace", {"tracing": True}),
        ("PUT", "/api/trace", None),
        ("GET", "/api/connections/not-a-number", None),
        ("GET", "/api/connections/-1", None),
        ("GET", "/api/connections/99999999999999999999999", None),
        ("GET", "/api/connections?limit=0", None),
        ("POST", "/api/trace", {}),
        ("GET", "/api/nothing", None),
    ]
    for method, path, body in cases:
        r = http.request(method, path, json=body)
        assert 400 <= r.status_code < 500, (method, path, r.status_code)
    r = http.request(
        "PUT",
        "/api/trace/filters",
        content=b"\x01\xff not json",
        headers={"content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500


def test_tracing_needs_a_destination(relay: RelayProcess) -> None:
    r = api(relay).put("/api/trace", json={"tracing": "on"})
    assert r.status_code == 409


def test_schemathesis_finds_no_server_error(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, tmp_path: Path
) -> None:
    relay = relay_factory(
        {
            "api_token": TOKEN,
            "hep_id": [sink.hep_id],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
        # positive_data_acceptance is left out: an IP network has a semantic check (a prefix
        # length of 99 matches the schema's pattern and is refused with 422)
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{relay.api_url}/openapi.json",
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "-n",
                "25",
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "1",
                "--no-color",
                "--request-timeout",
                "10",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout[-4000:]
    assert relay.proc.poll() is None
