"""The status page's files, `GET /api/status` and the live event stream `GET /api/events`
against the running sidecar with real TLS clients: the files open without the token and hold
no data, the data needs the token, events arrive as connections come and go (never with key
material), and a viewer that stops reading loses events, counted, while the relay and the
other viewers carry on."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess, to_toml
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]
TOKEN = "status-token-0b1e"
README = (Path(__file__).parent.parent / "README.md").read_text()


class EventReader:
    """Reads `GET /api/events` in a thread and keeps every event as (kind, data)."""

    def __init__(self, relay: RelayProcess, token: str | None = None) -> None:
        self.url = f"{relay.api_url}/api/events"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.connected.wait(10), "the event stream did not open"

    def _run(self) -> None:
        try:
            with httpx.stream(
                "GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=None)
            ) as r:
                self.status = r.status_code
                self.content_type = r.headers.get("content-type", "")
                self.connected.set()
                kind, data = "message", []
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        self.events.append((kind, json.loads("\n".join(data))))
                        kind, data = "message", []
        except httpx.HTTPError:
            pass
        finally:
            self.connected.set()
            self.ended.set()

    def wait(
        self, check: Callable[[str, dict[str, Any]], bool], what: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for kind, data in list(self.events):
                if check(kind, data):
                    return data
            time.sleep(0.02)
        raise AssertionError(f"no {what} among {self.events}")


def connection_event(name: str, port: int) -> Callable[[str, dict[str, Any]], bool]:
    return lambda kind, e: (
        kind == "connection" and e["event"] == name and e["remote"] == f"127.0.0.1:{port}"
    )


def plain_sip(port: int) -> None:
    """Plain SIP to the TLS port: a handshake failure (and a close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request())
        s.recv(100)


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def test_page_files_open_without_the_token_and_hold_no_data(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = relay_factory(
        {"api_token": TOKEN, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    with TlsClient(relay.port(), server_hostname="phone.example.com") as phone:
        phone.send(request())
        phone.recv_messages(1)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        conn = httpx.get(f"{relay.api_url}/api/connections", headers=auth).json()[0]
        for path, ctype in (
            ("/", "text/html"),
            ("/ui/status.js", "text/javascript"),
            ("/ui/status.css", "text/css"),
        ):
            r = httpx.get(relay.api_url + path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith(ctype)
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-content-type-options"] == "nosniff"
            for secret in (conn["id"], "phone.example.com", str(phone.local_port), TOKEN):
                assert secret not in r.text
            # no CDN: nothing is loaded from elsewhere
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text), path
        for path in ("/api/status", "/api/events", "/api/connections"):
            r = httpx.get(relay.api_url + path)
            assert r.status_code == 401, path
            assert conn["id"] not in r.text
        r = httpx.get(f"{relay.api_url}/api/status", headers=auth)
        assert r.status_code == 200 and r.json()["connections_open"]["inbound"] == 1


def test_status_counts_connections_and_failures_by_reason(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(
        {"hep_id": [sink.hep_id], "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    before = httpx.get(f"{relay.api_url}/api/status").json()
    with TlsClient(relay.port()) as phone:
        phone.send(request())
        phone.recv_messages(1)
        plain_sip(relay.port())
        plain_sip(relay.port())
        status = httpx.get(f"{relay.api_url}/api/status").json()
    assert status["connections_open"] == {"inbound": 1, "outbound": 0}
    assert status["connections_accepted"] - before["connections_accepted"] == 3
    assert status["handshakes_ok"] == 1
    assert status["handshakes_failed"] == 2
    assert status["handshake_failures"] == [
        {"direction": "inbound", "reason": "plain_sip", "count": 2}
    ]
    assert status["tracing"] == "off"
    assert status["events"]["viewers"] == 0
    assert "OpenSSL" in status["openssl"]


def test_events_arrive_as_connections_come_and_go_without_keys(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(
        {
            "hep_id": [sink.hep_id],
            "trace_on": True,
            "trace_keys": True,
            "api_token": TOKEN,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    denied = EventReader(relay)
    assert denied.status == 401
    viewer = EventReader(relay, TOKEN)
    assert viewer.status == 200 and viewer.content_type.startswith("text/event-stream")

    phone = TlsClient(relay.port(), server_hostname="phone.example.com")
    port = phone.local_port
    accepted = viewer.wait(connection_event("accepted", port), "accepted event")
    assert accepted["direction"] == "inbound" and accepted["sni"] == "phone.example.com"
    assert accepted["tls_version"] == "TLSv1.3" and accepted["traced"] is True
    phone.send(request())
    phone.recv_messages(1)
    phone.close_notify()
    closed = viewer.wait(connection_event("closed", port), "closed event")
    assert closed["id"] == accepted["id"] and closed["reason"] == "eof"
    assert closed["messages_in"] == 1 and closed["messages_out"] == 1

    with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as s:
        s.sendall(request())
        s.recv(100)
        failed = viewer.wait(
            connection_event("handshake_failed", s.getsockname()[1]), "handshake_failed event"
        )
    assert failed["reason"] == "plain_sip"
    raw = json.dumps(viewer.events)
    for secret in ("keylog", "CLIENT_", "SECRET", "master"):
        assert secret not in raw  # trace_keys is on: keys go to HEP, never to viewers

    # a reload that changes the token ends the streams opened with the old one
    relay.config_path.write_text(to_toml({**relay.config, "api_token": "rotated"}))
    r = httpx.post(f"{relay.api_url}/api/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert EventReader(relay, TOKEN).status == 401
    renewed = EventReader(relay, "rotated")
    with TlsClient(relay.port()):
        assert viewer.ended.wait(10)
        renewed.wait(lambda kind, e: kind == "connection", "an event with the new token")

    # shutdown ends the stream and the process exits cleanly
    assert relay.stop() == 0
    assert renewed.ended.wait(10)


def test_a_viewer_that_stops_reading_loses_events_never_slows_the_relay(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = relay_factory({"listener": [RelayProcess.tls_listener(backend.port)]})
    api = httpx.Client(base_url=relay.api_url, timeout=10)
    # a viewer that never reads, with a small receive window
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, api_port = relay.config["api_listen"].rsplit(":", 1)
    stuck.connect((host, int(api_port)))
    stuck.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reader = EventReader(relay)
    deadline = time.monotonic() + 5
    while api.get("/api/status").json()["events"]["viewers"] < 2:
        assert time.monotonic() < deadline, "the stuck viewer never subscribed"
        time.sleep(0.05)

    phone = TlsClient(relay.port())
    dropped = 0
    sent = 0
    # each connection: a handshake_failed and a closed event; the kernel buffers a few MB for
    # the stuck socket before the viewer's queue fills (about 4,500 connections here)
    for i in range(30000):
        plain_sip(relay.port())
        sent += 1
        if i % 50 == 49:
            # SIP keeps flowing while the viewer is stuck
            phone.send(request(call_id=f"rt{i}@stuck", cseq=i))
            assert phone.recv_messages(1)[0].startswith(b"SIP/2.0 200")
            dropped = api.get("/api/status").json()["events"]["dropped"]
            if dropped:
                break
    assert dropped > 0, f"no event dropped after {sent} failed connections"
    status = api.get("/api/status").json()
    assert status["events"]["viewers"] == 2
    assert status["handshake_failures"][0]["count"] == sent

    # the viewer that reads still gets every new event
    with TlsClient(relay.port()) as late:
        reader.wait(connection_event("accepted", late.local_port), "event after the drops")

    # once the stuck viewer reads again, it is told how many it missed
    stuck.settimeout(10)
    seen = b""
    deadline = time.monotonic() + 20
    while b"event: dropped" not in seen and time.monotonic() < deadline:
        chunk = stuck.recv(65536)
        if not chunk:
            break
        seen += chunk
    match = re.search(rb'event: dropped\ndata: \{"dropped":(\d+)', seen)
    assert match and int(match.group(1)) > 0
    stuck.close()
    phone.close_notify()


def test_readme_documents_the_page_and_its_endpoints() -> None:
    for text in ("`GET /api/status`", "`GET /api/events`", "`GET /`", "text/event-stream"):
        assert text in README, text


def test_an_event_stream_outlives_the_api_request_timeout(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = relay_factory(
        {"api_request_timeout": 1.0, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    viewer = EventReader(relay)
    time.sleep(2.5)  # longer than api_request_timeout, with no event
    assert not viewer.ended.is_set()
    with TlsClient(relay.port()) as phone:
        viewer.wait(connection_event("accepted", phone.local_port), "accepted event")
