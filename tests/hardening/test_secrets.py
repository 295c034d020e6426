"""Secrets: session keys never reach the logs, at any level; with a token, the API answers 401
without it, on every route; the key-log file is created 0600 whatever the umask; private key
material never comes out of the API (or the log)."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.hardening.conftest import Record
from tests.hardening.harness import LegitTraffic, connect, wait_closed
from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.pki import CertFiles, Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, client_context, request

Legit = Callable[..., LegitTraffic]
Factory = Callable[..., RelayProcess]
TOKEN = "hardening-token-5f2c"


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def keylog_secrets(text: str) -> list[str]:
    """The secret of each NSS key-log line (the hex after the client random)."""
    return [
        line.split()[2] for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


def wait_lines(path: Path, at_least: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= at_least or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def get_everything(relay: RelayProcess, token: str | None = None) -> dict[str, str]:
    """Every GET route of the API (connections one by one), as text."""
    http = httpx.Client(
        base_url=relay.api_url,
        timeout=10,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    out: dict[str, str] = {}
    schema = http.get("/openapi.json")
    out["/openapi.json"] = schema.text
    for path, ops in schema.json()["paths"].items():
        if "get" in ops and "{" not in path:
            if "text/event-stream" in ops["get"]["responses"]["200"].get("content", {}):
                out[path] = read_stream(http, path)
            else:
                out[path] = http.get(path).text
    for conn in http.get("/api/connections", params={"limit": 100000}).json():
        out[f"/api/connections/{conn['id']}"] = http.get(f"/api/connections/{conn['id']}").text
    for path in ("/docs", "/redoc"):
        out[path] = http.get(path).text
    return out


def read_stream(http: httpx.Client, path: str, seconds: float = 2.0) -> str:
    """What an endpoint that never ends (server-sent events) sends in `seconds`."""
    out = ""
    deadline = time.monotonic() + seconds
    try:
        with http.stream("GET", path, timeout=httpx.Timeout(10, read=seconds)) as r:
            for text in r.iter_text():
                out += text
                if time.monotonic() > deadline:
                    break
    except httpx.ReadTimeout:
        pass  # nothing more came
    return out


def test_session_keys_never_reach_the_log(
    relay_factory: Factory,
    backend: SipBackend,
    sink: HepSink,
    tmp_path: Path,
    legit: Legit,
    record: Record,
) -> None:
    """log_level debug, keys traced over HEP and appended to a file: every secret of every
    session is known (from the clients' own key logs), and none appears in the log or in any
    API answer."""
    keyfile = tmp_path / "relay-keys.log"
    relay = relay_factory(
        {
            "log_level": "debug",
            "trace_on": True,
            "trace_keys": True,
            "hep_id": [sink.hep_id],
            "keylog_file": str(keyfile),
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    ctx12 = client_context(max_version=ssl.TLSVersion.TLSv1_2)
    ctx13 = client_context(min_version=ssl.TLSVersion.TLSv1_3)
    for ctx, name in ((ctx12, "tls12"), (ctx13, "tls13")):
        ctx.keylog_filename = str(tmp_path / f"client-{name}.log")
    t12 = legit(relay.port(), ctx=ctx12, clients=2)
    t13 = legit(relay.port(), ctx=ctx13, clients=2)
    # and some connections that fail or end in every other way
    with connect(relay.port()) as s:
        s.sendall(request())
        wait_closed(s)
    with TlsClient(relay.port(), ctx=client_context()) as c:
        c.send(b"OPTIONS sip:x SIP/2.0\r\n\r\n")  # no Content-Length
        c.wait_closed()
    api_while_open = get_everything(relay)
    r12, r13 = t12.check(backend), t13.check(backend)
    client_secrets = keylog_secrets((tmp_path / "client-tls12.log").read_text()) + keylog_secrets(
        (tmp_path / "client-tls13.log").read_text()
    )
    # a TLS 1.2 session has one key-log line, a TLS 1.3 session five
    assert len(client_secrets) == r12.connections + 5 * r13.connections
    relay_file = wait_lines(keyfile, len(client_secrets))
    relay_secrets = keylog_secrets(relay_file)
    assert set(client_secrets) <= set(relay_secrets)  # the relay really had them all
    sink.settle(0.3)
    traced = b"".join(p.payload for p in sink.packets())
    assert all(s.encode() in traced for s in client_secrets)  # trace_keys sent them
    log = relay.log
    assert " DEBUG " in log
    leaked = [s for s in relay_secrets if s in log or s.upper() in log]
    assert leaked == []
    for label in ("CLIENT_RANDOM", "TRAFFIC_SECRET", "EXPORTER_SECRET"):
        assert label not in log
    api = {**api_while_open, **get_everything(relay)}
    assert not [
        (path, s)
        for path, body in api.items()
        for s in relay_secrets
        if s in body or s.upper() in body
    ]
    record(
        sessions=r12.connections + r13.connections,
        secrets_checked=len(relay_secrets),
        leaked_in_log=len(leaked),
        api_answers_checked=len(api),
    )


def test_api_requires_the_token_everywhere(
    relay_factory: Factory, backend: SipBackend, record: Record
) -> None:
    relay = relay_factory(
        {"api_token": TOKEN, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    good = {"Authorization": f"Bearer {TOKEN}"}
    schema = httpx.get(f"{relay.api_url}/openapi.json", headers=good, timeout=10).json()
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {base64.b64encode(f'x:{TOKEN}'.encode()).decode()}"},
        {"Authorization": TOKEN},
        {"X-Api-Token": TOKEN},
        {"Cookie": f"token={TOKEN}"},
    ]
    checked = 0
    with httpx.Client(base_url=relay.api_url, timeout=10) as http:
        for path, ops in schema["paths"].items():
            url = path.replace("{conn_id}", "1")
            for method in ops:
                for headers in bad_headers:
                    r = http.request(
                        method.upper(), url, headers=headers, params={"token": TOKEN}, json={}
                    )
                    if path in ("/healthz", "/readyz"):
                        assert r.status_code != 401, (method, path)
                    else:
                        assert r.status_code == 401, (method, path, headers, r.status_code)
                        assert r.headers["www-authenticate"].startswith("Bearer")
                        assert "tlstrace_" not in r.text and "connections" not in r.text
                    checked += 1
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
        # the documentation pages open without the token (issue 14: they describe the API
        # and expose nothing of the sidecar's state)
        for page in ("/openapi.json", "/docs", "/redoc"):
            r = http.get(page)
            assert r.status_code == 200, page
            assert TOKEN not in r.text and "tracing_enabled" not in r.text, page
    # paths that only look like the open ones
    host, port = relay.config["api_listen"].rsplit(":", 1)
    for raw_path in (
        "/healthz/../api/trace",
        "//api/trace",
        "/api/trace/",
        "/%61pi/trace",
        "/healthz%2F..%2Fapi%2Ftrace",
        "/readyz/../metrics",
        "/api/trace?/healthz",
        "/api/trace#/healthz",
        "/metrics;/healthz",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                f"GET {raw_path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 401, 404), (raw_path, answer[:200])
        assert b"tlstrace_" not in answer and b"tracing" not in answer, raw_path
        checked += 1
    record(requests_without_a_valid_token=checked, answered_401_or_refused=checked)


def test_keylog_file_is_created_0600_whatever_the_umask(
    relay_factory: Factory, backend: SipBackend, tmp_path: Path
) -> None:
    created = tmp_path / "new-keys.log"
    loose = tmp_path / "loose-keys.log"
    loose.write_text("# kept\n")
    loose.chmod(0o644)
    old = os.umask(0)  # the relay inherits it
    try:
        relays = [
            relay_factory(
                {"keylog_file": str(path), "listener": [RelayProcess.tls_listener(backend.port)]}
            )
            for path in (created, loose)
        ]
    finally:
        os.umask(old)
    for relay in relays:
        with TlsClient(relay.port()) as c:
            c.send(request())
            c.recv_messages(1)
            c.close_notify()
    for path in (created, loose):
        text = wait_lines(path, 5)
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(keylog_secrets(text)) >= 5
    assert loose.read_text().startswith("# kept\n")  # appended to, not replaced


def key_material(files: CertFiles) -> list[str]:
    """Ways the private key could show up: PEM text, each base64 line, the private number
    in hex and decimal."""
    pem = files.key.read_text()
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    key = files.issued.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = [key.private_numbers().private_value]
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        n = key.private_numbers()
        numbers = [n.d, n.p, n.q]
    out = ["PRIVATE KEY", *lines]
    for number in numbers:
        out += [f"{number:x}", f"{number:X}", str(number)]
    return out


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_private_key_material_never_leaves_the_process(
    relay_factory: Factory,
    backend: SipBackend,
    pki: Pki,
    tmp_path: Path,
    sink: HepSink,
    kind: str,
    record: Record,
) -> None:
    server = pki.leaf(f"{kind}.secrets.hardening", kind=kind, tag=f"secrets-{kind}")
    phone = pki.leaf(
        f"phone-{kind}.secrets.hardening", client=True, kind=kind, tag=f"secrets-phone-{kind}"
    )
    relay = relay_factory(
        {
            "log_level": "debug",
            "trace_on": True,
            "hep_id": [sink.hep_id],
            "server_domain": [
                {
                    "name": "default",
                    "certificate": str(server.cert),
                    "private_key": str(server.key),
                    "client_cert": "optional",
                    "ca_list": str(pki.ca_file),
                }
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    ctx = client_context(cert=str(phone.cert), key=str(phone.key))
    clients = [TlsClient(relay.port(), ctx=ctx) for _ in range(2)]
    for i, c in enumerate(clients):
        c.send(request(call_id=f"keys{i}@x"))
        c.recv_messages(1)
    answers = get_everything(relay)
    details = [json.loads(v) for k, v in answers.items() if k.startswith("/api/connections/")]
    assert details and all(d["local_certificate"] and d["peer_certificate"] for d in details)
    for c in clients:
        c.close_notify()
    sink.settle(0.3)
    traced = b"".join(p.payload for p in sink.packets()).decode(errors="replace")
    secrets = key_material(server) + key_material(phone)
    places = {**answers, "log": relay.log, "HEP": traced}
    leaks = [(where, s[:20]) for where, text in places.items() for s in secrets if s in text]
    assert leaks == []
    record(key=kind, places_checked=len(places), leaks=len(leaks))
