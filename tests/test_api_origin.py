"""The API against DNS rebinding and cross-site requests (Host and Origin checks), and bodies
with numbers JSON has not (NaN, Infinity, 1e400): the running sidecar, a real HTTP client,
requests written byte for byte where an HTTP client would rewrite them."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess


@pytest.fixture
def sidecar(
    relay_factory: Callable[..., RelayProcess], backend: SipBackend
) -> Iterator[RelayProcess]:
    with HepSink() as sink:
        yield relay_factory(
            {
                "hep_id": [sink.hep_id],
                "api_allowed_hosts": ["tlstrace.example.net"],
                "listener": [RelayProcess.tls_listener(backend.port)],
            }
        )


def raw(
    relay: RelayProcess,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    family: int = socket.AF_INET,
) -> tuple[int, bytes]:
    """One request exactly as written; the status and the body of the answer."""
    host, port = relay.config["api_listen"].rsplit(":", 1)
    lines = [
        f"{method} {path} HTTP/1.1",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, answer = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), answer


def tracing(relay: RelayProcess) -> str:
    return str(httpx.get(f"{relay.api_url}/api/trace", timeout=10).json()["tracing"])


def test_dns_rebinding_is_refused(sidecar: RelayProcess) -> None:
    port = sidecar.config["api_listen"].rsplit(":", 1)[1]
    switch = b'{"tracing":"on"}'
    for host in (
        f"rebind.attacker.example:{port}",
        "rebind.attacker.example",
        "localhost.attacker.example",
        f"127.0.0.1.nip.io:{port}",
        "::1",
        "[::1",
        f"127.0.0.1:{port}x",
        "[not-ipv6]:80",
    ):
        status, body = raw(
            sidecar, "PUT", "/api/trace", {"Host": host, "Content-Type": "text/plain"}, switch
        )
        assert status == 421, (host, status, body)
        assert b"api_allowed_hosts" in body
    assert tracing(sidecar) == "off"
    status, _ = raw(sidecar, "GET", "/metrics", {"Host": "rebind.attacker.example"})
    assert status == 421


def test_ip_literals_localhost_and_allowed_names_are_answered(sidecar: RelayProcess) -> None:
    port = sidecar.config["api_listen"].rsplit(":", 1)[1]
    for host in (
        f"127.0.0.1:{port}",
        "127.0.0.1",
        "10.1.2.3:9999",
        f"[::1]:{port}",
        "[::1]",
        f"localhost:{port}",
        "LOCALHOST",
        "localhost.",
        "tlstrace.example.net",
        f"TLStrace.Example.NET:{port}",
    ):
        status, body = raw(sidecar, "GET", "/metrics", {"Host": host})
        assert status == 200, (host, status, body)
    # HTTP/1.0 without Host, as some probes send it
    host_, port_ = sidecar.config["api_listen"].rsplit(":", 1)
    with socket.create_connection((host_, int(port_)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # what Prometheus, curl and the client do
    assert httpx.get(f"{sidecar.api_url}/metrics", timeout=10).status_code == 200
    assert (
        httpx.put(f"{sidecar.api_url}/api/trace", json={"tracing": "on"}, timeout=10).status_code
        == 200
    )


def test_cross_site_requests_are_refused(sidecar: RelayProcess) -> None:
    port = sidecar.config["api_listen"].rsplit(":", 1)[1]
    here = f"127.0.0.1:{port}"
    form = {"Host": here, "Content-Type": "application/x-www-form-urlencoded"}
    for origin in (
        "http://attacker.example",
        "null",
        f"https://{here}",
        f"http://{here}.x",
        "http://127.0.0.1",
        f"http://localhost:{port}",
        "garbage",
    ):
        status, body = raw(sidecar, "POST", "/api/reload", {**form, "Origin": origin})
        assert status == 403, (origin, status, body)
        status, _ = raw(
            sidecar,
            "PUT",
            "/api/trace",
            {"Host": here, "Content-Type": "text/plain", "Origin": origin},
            b'{"tracing":"on"}',
        )
        assert status == 403
        status, _ = raw(sidecar, "DELETE", "/api/connections/1", {"Host": here, "Origin": origin})
        assert status == 403
    assert tracing(sidecar) == "off"
    assert "reloaded" not in sidecar.log
    # same origin (what Swagger UI's "Try it out" sends) and no Origin at all pass
    status, _ = raw(
        sidecar,
        "PUT",
        "/api/trace",
        {"Host": here, "Origin": f"http://{here}", "Content-Type": "application/json"},
        b'{"tracing":"on"}',
    )
    assert status == 200 and tracing(sidecar) == "on"
    status, _ = raw(
        sidecar, "POST", "/api/reload", {"Host": "localhost", "Origin": "http://LOCALHOST:80"}
    )
    assert status == 200
    # a cross-origin GET is harmless (the browser does not let the page read the answer)
    status, _ = raw(
        sidecar, "GET", "/api/trace", {"Host": here, "Origin": "http://attacker.example"}
    )
    assert status == 200


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_numbers_json_has_not_are_422(
    sidecar: RelayProcess, number: str, content_type: str
) -> None:
    http = httpx.Client(
        base_url=sidecar.api_url, timeout=10, headers={"Content-Type": content_type}
    )
    for path, body in (
        ("/api/trace", f'{{"tracing":"on","for_seconds":{number}}}'),
        ("/api/trace/filters", f'{{"rules":[{{"action":"deny","remote_port":{number}}}]}}'),
    ):
        r = http.put(path, content=body)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"] == ["body"]
        assert "JSON" in r.json()["detail"][0]["msg"] or "large" in r.json()["detail"][0]["msg"]
    assert tracing(sidecar) == "off"
    assert "Traceback" not in sidecar.log
    assert http.put("/api/trace", content='{"tracing":"on","for_seconds":1e3}').status_code == 200
