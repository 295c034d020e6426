"""Logs of the running sidecar: with `log_format = "json"` every line it writes (its own,
uvicorn's) is one JSON object with time, level, logger and message first, and structured
fields where the line has them; the start-up line names the version, the OpenSSL version and
the configuration file (or the embedded defaults); and the line recording a tracing switch
says who switched it: the API client's address, SIGHUP, a reload over the API, or the file."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.net import free_port, wait_port
from tests.support.relay import RelayProcess, to_toml
from tests.support.sip import TlsClient, request
from tlstrace import __version__
from tlstrace.config import ConfigError, load_config

Factory = Callable[..., RelayProcess]
KEYS = ["time", "level", "logger", "message"]


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the log, each one JSON object with the stable keys first."""
    records = []
    for line in text.splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict), line
        assert list(record)[:4] == KEYS, line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), line
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), line
        records.append(record)
    return records


def api_call(
    relay: RelayProcess, method: str, path: str, body: dict[str, str] | None = None
) -> tuple[int, str]:
    """One API request; returns the status and the client's HOST:PORT as the relay saw it."""
    host, port = relay.config["api_listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.connect()
    assert conn.sock is not None
    host, port = conn.sock.getsockname()[:2]
    local = f"{host}:{port}"
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"content-type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status, local


def find(records: list[dict[str, Any]], text: str) -> dict[str, Any]:
    hits = [r for r in records if text in r["message"]]
    assert hits, f"no line with {text!r} in {[r['message'] for r in records]}"
    return hits[-1]


def test_json_log_every_line_an_object_with_fields_and_who_switched(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    config = {
        "log_format": "json",
        "trace_on": True,
        "hep_id": [sink.hep_id],
        "listener": [RelayProcess.tls_listener(backend.port)],
    }
    relay = relay_factory(config)
    path = relay.config_path
    relay.wait_log("tracing on from start-up")

    # connection lines: a TLS client and a handshake failure
    with TlsClient(relay.port()) as phone:
        phone.send(request())
        phone.recv_messages(1)
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as plain:
            plain.sendall(request())
            plain.recv(100)
            plain_port = plain.getsockname()[1]
        # SIGHUP with trace_on = false in the file switches tracing off
        path.write_text(to_toml({**relay.config, "trace_on": False}))
        relay.signal(signal.SIGHUP)
        relay.wait_log("by a reload (SIGHUP)")
        # a reload over the API with trace_on = true switches it on
        path.write_text(to_toml({**relay.config, "trace_on": True}))
        status, client_reload = api_call(relay, "POST", "/api/reload")
        assert status == 200
        # the API switches it off
        status, client_off = api_call(relay, "PUT", "/api/trace", {"tracing": "off"})
        assert status == 200
        # uvicorn's own lines are JSON too
        api_host, api_port = relay.config["api_listen"].rsplit(":", 1)
        with socket.create_connection((api_host, int(api_port)), timeout=10) as bad:
            bad.sendall(b"NOT HTTP\x00\r\n\r\n")
            bad.recv(1000)
        relay.wait_log("Invalid HTTP request")
        phone.close_notify()
    assert relay.stop() == 0

    records = json_lines(relay.log_path.read_text())
    start = records[0]
    assert start["logger"] == "tlstrace" and "starting" in start["message"]
    assert start["version"] == __version__ and __version__ in start["message"]
    assert start["openssl"] == ssl.OPENSSL_VERSION and ssl.OPENSSL_VERSION in start["message"]
    assert start["config"] == str(path) and str(path) in start["message"]

    first = find(records, "tracing on from start-up")
    assert first["switched_by"] == "file" and str(path) in first["message"]
    off = find(records, "tracing switched off by API client")
    assert off["switched_by"] == "api" and off["client"] == client_off
    assert off["message"].endswith(f"by API client {client_off}") and off["tracing"] == "off"
    hup = find(records, "tracing switched off by a reload (SIGHUP)")
    assert hup["switched_by"] == "signal" and hup["tracing"] == "off" and "client" not in hup
    assert f"trace_on = false in {path}" in hup["message"]
    api_reload = find(records, f"tracing switched on by a reload (API client {client_reload})")
    assert api_reload["switched_by"] == "api" and api_reload["client"] == client_reload
    assert f"trace_on = true in {path}" in api_reload["message"]
    reloads = [r for r in records if r["message"].startswith("reloaded: ")]
    assert [r["reloaded_by"] for r in reloads] == ["signal", "api"]
    assert reloads[0]["message"].endswith("(SIGHUP)") and "client" not in reloads[0]
    assert reloads[1]["message"].endswith(f"(API client {client_reload})")
    assert reloads[1]["client"] == client_reload

    failed = find(records, "TLS handshake failed: plain_sip")
    assert failed["remote"] == f"127.0.0.1:{plain_port}"
    assert failed["direction"] == "inbound" and failed["reason"] == "plain_sip"
    assert re.fullmatch(r"\d+", failed["conn"]) and failed["conn"] in failed["message"]
    assert find(records, "Invalid HTTP request")["logger"].startswith("uvicorn")
    assert records[-1]["message"] == "stopped"


def test_json_flag_and_embedded_defaults(tmp_path: Path) -> None:
    """No configuration file, json from the flag: the start-up line says so."""
    tls, api = free_port(), free_port()
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tlstrace",
                "run",
                "--log-format",
                "json",
                "--listen",
                f"tls:127.0.0.1:{tls}",
                "--api",
                f"127.0.0.1:{api}",
                "--state-dir",
                str(tmp_path / "state"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        try:
            wait_port("127.0.0.1", api)
            deadline = time.monotonic() + 10  # SIGTERM is handled once start-up is over
            while b"listening on" not in log_path.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    records = json_lines(log_path.read_text())
    assert records[0]["config"] is None
    assert records[0]["message"].endswith("configuration: embedded defaults")


def test_text_log_start_line_and_switch(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(
        {"hep_id": [sink.hep_id], "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    status, client = api_call(relay, "PUT", "/api/trace", {"tracing": "on"})
    assert status == 200
    log = relay.wait_log(f"tracing switched on by API client {client}")
    first = log.splitlines()[0]
    assert f"tlstrace {__version__} starting" in first and ssl.OPENSSL_VERSION in first
    assert first.endswith(f"configuration: {relay.config_path}")
    assert not log.lstrip().startswith("{")


def test_log_format_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('log_format = "xml"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: log_format: ")
    assert "'text' or 'json'" in str(e.value)
    r = subprocess.run(
        [sys.executable, "-m", "tlstrace", "run", "--log-format", "xml"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2 and "--log-format: invalid choice: 'xml'" in r.stderr
