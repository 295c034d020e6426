"""Reload (SIGHUP and POST /api/reload) of every top-level configuration key.

For each key of the configuration model: change it in the file, reload with SIGHUP, then
change it again and reload through the API. Each time the key must be applied (in force in
GET /api/config, and where it shows, in behaviour: HEP packets at the new collector, the
API's token, debug lines...) or reported as not applied (in the log and in the API's answer)
with its running value kept. The decision for each key is written here, independently of
tlstrace/reload.py: a key added to the model later without a decision fails this test.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess, to_toml
from tests.support.sip import TlsClient, request
from tlstrace.config import Config, load_config

NOW, NEW, RESTART = "applied", "applied to new connections", "needs a restart"

#: key -> what a reload does with it
EXPECTED: dict[str, str] = {
    "tls_port": RESTART,
    "tls_crlf_pingpong": NEW,
    "tls_crlf_drop": NEW,
    "tls_max_msg_chunks": NEW,
    "cert_check_on_conn_reusage": NOW,
    "tls_handshake_timeout": NEW,
    "tls_send_timeout": NOW,
    "max_msg_size": NEW,
    "tcp_max_msg_time": NOW,
    "tcp_connection_lifetime": NOW,
    "tcp_max_connections": NOW,
    "registration_margin": NOW,
    "trunk_max_transactions": RESTART,
    "trunk_max_dialogs": RESTART,
    "trunk_max_table_bytes": RESTART,
    "trunk_dialog_idle": RESTART,
    "trace_on_for_seconds": NOW,
    "hep_max_packet": NOW,
    "conn_buffer_limit": NOW,
    "shutdown_timeout": NOW,
    "backend_probe_interval": NOW,
    "reuse_port": RESTART,
    "workers": RESTART,
    "config_watch": NOW,
    "state_dir": NEW,
    "log_level": NOW,
    "log_format": NOW,
    "trace_on": NOW,
    "hep_id": NOW,
    "trace_destination": NOW,
    "hep_capture_id": NEW,
    "hep_auth_key": NEW,
    "hep_node_name": NEW,
    "hep_ca_list": NOW,
    "hep_verify_cert": NOW,
    "trace_ip_proto": NEW,
    "trace_backend": NEW,
    "trace_event_format": NOW,
    "homer5_delim": NOW,
    "trace_sessions": NOW,
    "trace_keys": NOW,
    "keylog_file": NOW,
    "trace_filter": NEW,
    "trace_filter_default": NEW,
    "api_listen": RESTART,
    "api_token": NOW,
    "api_max_connections": NOW,
    "api_request_timeout": NOW,
    "fd_reserve": NOW,
    "api_allowed_hosts": NOW,
    "tls_keepalive_rate": NOW,
    "tls_max_non_sip_records": NOW,
    "ws_origins": NEW,
    "ws_max_upgrade_size": NEW,
    "ws_upgrade_timeout": NOW,
    "trace_ws_ip_proto": NEW,
    "handshake_rate_per_source": NOW,
    "handshake_rate_burst": NOW,
    "handshake_rate_sources": NOW,
    "listener": RESTART,
    "server_domain": NEW,
    "client_domain": NEW,
}


class Env:
    """What a case needs: the relay, its base configuration, two HEP sinks, a PKI."""

    def __init__(
        self, tmp: Path, backend: SipBackend, pki: Pki, a: HepSink, b: HepSink, c: HepSink
    ) -> None:
        self.tmp, self.pki, self.sinks = tmp, pki, (a, b, c)
        self.listener = RelayProcess.tls_listener(backend.port)
        self.base: dict[str, Any] = {
            "trace_on": True,
            "hep_id": [
                f"[a]127.0.0.1:{a.port};transport=udp",
                f"[b]127.0.0.1:{b.port};transport=udp",
            ],
            "listener": [self.listener],
        }
        self.relay: RelayProcess | None = None
        self.token: str | None = None

    def http(self) -> httpx.Client:
        assert self.relay is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(base_url=self.relay.api_url, headers=headers, timeout=10)

    def call(self, call_id: str) -> None:
        """One OPTIONS over a new TLS connection, answered."""
        assert self.relay is not None
        with TlsClient(self.relay.port()) as c:
            c.send(request(call_id=call_id))
            assert c.recv_messages(1)[0].startswith(b"SIP/2.0 200")


def changes(env: Env, key: str) -> Any:
    """A valid value for `key` that differs from the base configuration's."""
    server = env.pki.leaf("reload.example.com", tag="reload-server")
    _, b, c = env.sinks
    values: dict[str, Any] = {
        "tls_port": 5071,
        "tls_crlf_pingpong": False,
        "tls_crlf_drop": True,
        "tls_max_msg_chunks": 8,
        "cert_check_on_conn_reusage": True,
        "tls_handshake_timeout": 3000,
        "tls_send_timeout": 5000,
        "max_msg_size": 32768,
        "tcp_max_msg_time": 2.0,
        "tcp_connection_lifetime": 60.0,
        "tcp_max_connections": 1,
        "registration_margin": 10.0,
        "trunk_max_transactions": 100,
        "trunk_max_dialogs": 100,
        "trunk_max_table_bytes": 131072,
        "trunk_dialog_idle": 60.0,
        "trace_on_for_seconds": 600.0,
        "hep_max_packet": 4000,
        "tls_keepalive_rate": 5.0,
        "tls_max_non_sip_records": 8,
        "ws_origins": ["https://phone.example.com"],
        "ws_max_upgrade_size": 4096,
        "ws_upgrade_timeout": 2000,
        "trace_ws_ip_proto": 22,
        "fd_reserve": 32,
        "handshake_rate_per_source": 50.0,
        "handshake_rate_burst": 20,
        "handshake_rate_sources": 1024,
        "api_max_connections": 16,
        "api_request_timeout": 5.0,
        "conn_buffer_limit": 131072,
        "shutdown_timeout": 2.0,
        "backend_probe_interval": 5.0,
        "reuse_port": True,
        "workers": 2,
        "config_watch": True,
        "state_dir": str(env.tmp / "state2"),
        "log_level": "debug",
        "log_format": "json",
        "trace_on": False,
        "hep_id": [f"[a]127.0.0.1:{c.port};transport=udp", f"[b]127.0.0.1:{b.port};transport=udp"],
        "trace_destination": ["b"],
        "hep_capture_id": 4242,
        "hep_auth_key": "reload-key",
        "hep_node_name": "reload-node",
        "hep_ca_list": str(env.pki.ca_file),
        "hep_verify_cert": False,
        "trace_ip_proto": 22,
        "trace_backend": True,
        "trace_event_format": "homer5",
        "homer5_delim": ";",
        "trace_sessions": False,
        "trace_keys": True,
        "keylog_file": str(env.tmp / "keys.log"),
        "trace_filter": [{"action": "deny", "remote": "10.0.0.0/8"}],
        "trace_filter_default": "deny",
        "api_listen": f"127.0.0.1:{free_port()}",
        "api_token": "reload-token",
        "api_allowed_hosts": ["tlstrace.reload.example"],
        "listener": [env.listener, RelayProcess.tls_listener(free_port())],
        "server_domain": [
            {"name": "default", "certificate": str(server.cert), "private_key": str(server.key)}
        ],
        "client_domain": [{"name": "default", "verify_cert": False}],
    }
    return values[key]


def _hep_packets_for(sink: HepSink, call_id: str) -> list[Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = [p for p in sink.packets(1) if f"Call-ID: {call_id}".encode() in p.payload]
        if got:
            return got
        time.sleep(0.05)
    return []


# -- what an applied change does, where it shows outside GET /api/config ----------------------


def probe_hep_id(env: Env, applied: bool, tag: str) -> None:
    a, _, c = env.sinks
    dests = {d["name"]: d["address"] for d in env.http().get("/api/destinations").json()}
    want = c if applied else a
    assert dests["a"] == f"127.0.0.1:{want.port}", dests
    env.call(f"hep-{tag}@t")
    assert _hep_packets_for(want, f"hep-{tag}@t"), "no HEP packet at the new address"


def probe_trace_destination(env: Env, applied: bool, tag: str) -> None:
    names = env.http().get("/api/trace").json()["destinations"]
    assert names == (["b"] if applied else ["a", "b"])
    env.call(f"dest-{tag}@t")
    assert bool(_hep_packets_for(env.sinks[0], f"dest-{tag}@t")) == (not applied)


def probe_trace_on(env: Env, applied: bool, tag: str) -> None:
    tracing = env.http().get("/api/trace").json()["tracing"]
    assert tracing == ("off" if applied else "on")


def probe_hep_capture_id(env: Env, applied: bool, tag: str) -> None:
    env.call(f"cid-{tag}@t")
    (p, *_) = _hep_packets_for(env.sinks[0], f"cid-{tag}@t")
    assert p.capture_id == (4242 if applied else 1)


def probe_log_level(env: Env, applied: bool, tag: str) -> None:
    assert env.relay is not None
    env.call(f"log-{tag}@t")

    def since_reload() -> str:
        assert env.relay is not None
        return env.relay.log.rsplit("INFO tlstrace: reloaded:", 1)[1]

    deadline = time.monotonic() + (10 if applied else 0.5)
    while " DEBUG " not in since_reload() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (" DEBUG " in since_reload()) == applied


def probe_api_token(env: Env, applied: bool, tag: str) -> None:
    assert env.relay is not None
    bare = httpx.get(f"{env.relay.api_url}/api/trace", timeout=10)
    assert bare.status_code == (401 if applied else 200)


def probe_api_allowed_hosts(env: Env, applied: bool, tag: str) -> None:
    answer = env.http().get("/healthz", headers={"Host": "tlstrace.reload.example"})
    assert answer.status_code == (200 if applied else 421)


def probe_tcp_max_connections(env: Env, applied: bool, tag: str) -> None:
    assert env.relay is not None
    with TlsClient(env.relay.port()) as first:
        first.send(request(call_id=f"max-{tag}@t"))
        first.recv_messages(1)
        if applied:
            with (
                pytest.raises((OSError, AssertionError)),
                TlsClient(env.relay.port(), timeout=5) as second,
            ):
                second.send(request(call_id=f"max2-{tag}@t"))
                second.recv_messages(1, timeout=5)
        else:
            env.call(f"max2-{tag}@t")


def probe_listener(env: Env, applied: bool, tag: str) -> None:
    extra = changes(env, "listener")[1]["listen"]  # a fresh port each call: never bound
    port = int(str(extra).rsplit(":", 1)[1])
    with pytest.raises(OSError):
        TlsClient(port, timeout=2)


def probe_log_format(env: Env, applied: bool, tag: str) -> None:
    """A line logged after the reload (uvicorn's, for a bad request) is JSON when applied."""
    assert env.relay is not None
    before = env.relay.log.count("Invalid HTTP request")
    host, port = env.relay.config["api_listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as bad:
        bad.sendall(b"NOT HTTP\x00\r\n\r\n")
        bad.recv(1000)
    deadline = time.monotonic() + 10
    while env.relay.log.count("Invalid HTTP request") == before:
        assert time.monotonic() < deadline, env.relay.log
        time.sleep(0.05)
    line = [ln for ln in env.relay.log.splitlines() if "Invalid HTTP request" in ln][-1]
    assert line.startswith("{") == applied, line


def probe_trace_on_for_seconds(env: Env, applied: bool, tag: str) -> None:
    remaining = env.http().get("/api/trace").json()["remaining_seconds"]
    if applied:
        assert remaining is not None and 0 < remaining <= 600
    else:
        assert remaining is None


PROBES: dict[str, Callable[[Env, bool, str], None]] = {
    "trace_on_for_seconds": probe_trace_on_for_seconds,
    "hep_id": probe_hep_id,
    "trace_destination": probe_trace_destination,
    "trace_on": probe_trace_on,
    "hep_capture_id": probe_hep_capture_id,
    "log_level": probe_log_level,
    "log_format": probe_log_format,
    "api_token": probe_api_token,
    "api_allowed_hosts": probe_api_allowed_hosts,
    "tcp_max_connections": probe_tcp_max_connections,
    "listener": probe_listener,
}


@pytest.fixture
def env(tmp_path: Path, backend: SipBackend, pki: Pki) -> Iterator[Env]:
    with HepSink() as a, HepSink() as b, HepSink() as c:
        yield Env(tmp_path, backend, pki, a, b, c)


def in_force(env: Env, path: Path, key: str) -> Any:
    value = load_config(path).model_dump(mode="json")[key]
    return "<set>" if key in ("api_token", "hep_auth_key") and value is not None else value


@pytest.mark.parametrize("key", list(Config.model_fields))
def test_reload_applies_or_reports_every_key(
    key: str, env: Env, relay_factory: Callable[..., RelayProcess]
) -> None:
    assert key in EXPECTED, (
        f"no reload decision for {key!r}: add one here and in tlstrace/reload.py"
    )
    expected = EXPECTED[key]
    relay = env.relay = relay_factory(env.base)
    relay.wait_log("listening on")  # the SIGHUP handler is installed after start-up
    base_file = env.tmp / "base.toml"
    base_file.write_text(relay.config_path.read_text())
    changed = {**env.base, key: changes(env, key)}

    # 1. SIGHUP with the key changed
    relay.config_path.write_text(to_toml({**relay.config, **changed}))
    reloads = relay.log.count("INFO tlstrace: reloaded:")
    relay.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while relay.log.count("INFO tlstrace: reloaded:") <= reloads:
        assert time.monotonic() < deadline, relay.log
        time.sleep(0.05)
    line = [ln for ln in relay.log.splitlines() if "INFO tlstrace: reloaded:" in ln][-1]
    if expected == RESTART:
        assert re.search(rf"not applied \(needs a restart\): .*\b{key}\b", line), line
        assert f"WARNING tlstrace: reload: {key} changed but needs a restart" in relay.log
    else:
        assert re.search(rf"; applied: .*\b{key}\b", line), line
    applied = expected != RESTART
    if key == "api_token" and applied:
        env.token = changed[key]
    now = env.http().get("/api/config").json()[key]
    assert now == in_force(env, relay.config_path if applied else base_file, key)
    if key in PROBES:
        PROBES[key](env, applied, "sighup")

    # 2. the API, with the key changed again (back to the base value when it was applied)
    second = env.base if applied else changed
    relay.config_path.write_text(to_toml({**relay.config, **second}))
    answer = env.http().post("/api/reload")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["reloaded"] is True
    if applied:
        assert body["applied"].get(key) == expected, body
        assert key not in body["not_applied"]
        env.token = None if key == "api_token" else env.token
    else:
        assert body["not_applied"][key].startswith(RESTART), body
        assert key not in body["applied"]
    assert env.http().get("/api/config").json()[key] == in_force(env, base_file, key)
    if key in PROBES:
        PROBES[key](env, False, "api")


def test_a_replaced_destination_sends_what_it_queued_then_stops(
    env: Env, relay_factory: Callable[..., RelayProcess]
) -> None:
    """The old sender of a destination whose address changed is drained and stopped: it no
    longer shows in /api/destinations, and later traffic goes to the new address only."""
    relay = env.relay = relay_factory(env.base)
    a, _, c = env.sinks
    env.call("before@t")
    assert _hep_packets_for(a, "before@t")
    relay.config_path.write_text(to_toml({**relay.config, "hep_id": changes(env, "hep_id")}))
    assert env.http().post("/api/reload").json()["applied"] == {"hep_id": NOW}
    relay.wait_log("reload: HEP destination a (")
    env.call("after@t")
    assert _hep_packets_for(c, "after@t")
    time.sleep(0.3)
    assert not [p for p in a.packets(1) if b"after@t" in p.payload]
    names = [d["name"] for d in env.http().get("/api/destinations").json()]
    assert sorted(names) == ["a", "b"]
