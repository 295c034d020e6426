"""`tlstrace trace|connections|reload` against the running sidecar: what an operator types, and
clear one-line errors when the API cannot be reached or wants a token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.net import free_port
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]
TOKEN = "cli-token-5e1b"


def tlstrace(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TLSTRACE_API_TOKEN"}
    if token is not None:
        env["TLSTRACE_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "tlstrace", *args], capture_output=True,
                          text=True, timeout=30, env=env)


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


@pytest.fixture
def sidecar(relay_factory: Factory, backend: SipBackend, sink: HepSink) -> RelayProcess:
    return relay_factory({"api_token": TOKEN, "hep_id": [sink.hep_id],
                          "listener": [RelayProcess.tls_listener(backend.port)]})


def where(relay: RelayProcess) -> list[str]:
    return ["--api", str(relay.config["api_listen"])]


def state(relay: RelayProcess) -> dict[str, object]:
    return httpx.get(f"{relay.api_url}/api/trace", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=10).json()  # type: ignore[no-any-return]


def test_trace_on_for_a_while_status_and_off(sidecar: RelayProcess) -> None:
    r = tlstrace("trace", "status", *where(sidecar), token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tracing off; HEP destinations: sink; 0 connection(s) traced")

    r = tlstrace("trace", "on", "--for", "10m", *where(sidecar), token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tracing on until ") and "left)" in r.stdout
    now = state(sidecar)
    assert now["tracing"] == "on" and 590 <= float(now["remaining_seconds"]) <= 600  # type: ignore[arg-type]
    assert f"until {now['until']}" in tlstrace("trace", "status", *where(sidecar),
                                               token=TOKEN).stdout

    r = tlstrace("trace", "off", *where(sidecar), token=TOKEN)
    assert r.returncode == 0 and r.stdout.startswith("tracing off;")
    assert state(sidecar)["tracing"] == "off"


def test_connections_table(sidecar: RelayProcess) -> None:
    with TlsClient(sidecar.port(), server_hostname="phone.example") as client:
        client.send(request(call_id="table@t"))
        client.recv_messages(1)
        r = tlstrace("connections", *where(sidecar), token=TOKEN)
        assert r.returncode == 0, r.stderr
        header, row, total = r.stdout.splitlines()
        assert header.split() == ["ID", "DIR", "STATE", "REMOTE", "LOCAL", "SNI", "TLS", "AGE",
                                  "MSG", "IN", "MSG", "OUT", "TRACED"]
        assert f"127.0.0.1:{client.local_port}" in row.split()
        assert {"inbound", "phone.example", "TLSv1.3", "no"} <= set(row.split())
        assert total == "1 connection"
        r = tlstrace("connections", "--json", "--direction", "inbound", *where(sidecar),
                     token=TOKEN)
        (conn,) = json.loads(r.stdout)
        assert conn["remote"] == f"127.0.0.1:{client.local_port}" and conn["messages_in"] == 1
        r = tlstrace("connections", "--traced", *where(sidecar), token=TOKEN)
        assert r.stdout.splitlines()[-1] == "0 connections"


def test_reload(sidecar: RelayProcess) -> None:
    r = tlstrace("reload", *where(sidecar), token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("reloaded:")
    sidecar.config_path.write_text(sidecar.config_path.read_text() + "\nbogus = 1\n")
    r = tlstrace("reload", *where(sidecar), token=TOKEN)
    assert r.returncode == 1
    assert r.stdout.startswith("reload failed, nothing changed: ") and "bogus" in r.stdout


def test_api_and_token_from_the_config_file(sidecar: RelayProcess) -> None:
    r = tlstrace("trace", "status", "--config", str(sidecar.config_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tracing off")


def test_unreachable_api_is_one_clear_line() -> None:
    port = free_port()
    r = tlstrace("trace", "status", "--api", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"tlstrace trace: cannot reach the API at http://127.0.0.1:{port}: Connection refused "
        "(is tlstrace running, and is its api_listen this address? --api HOST:PORT chooses "
        "another)"]


def test_401_says_what_to_do(sidecar: RelayProcess) -> None:
    for command in (["trace", "status"], ["connections"], ["reload"]):
        r = tlstrace(*command, *where(sidecar))
        assert r.returncode == 1
        api = sidecar.api_url
        assert r.stderr.strip() == (f"tlstrace {command[0]}: the API at {api} answered 401: "
                                    "it needs a token: set TLSTRACE_API_TOKEN")
    r = tlstrace("trace", "on", *where(sidecar), token="wrong")
    assert "the token in TLSTRACE_API_TOKEN was refused" in r.stderr
    assert "wrong" not in r.stderr
    assert state(sidecar)["tracing"] == "off"


def test_errors_of_the_api_and_of_the_flags(relay: RelayProcess) -> None:
    r = tlstrace("trace", "on", *where(relay))  # no HEP destination configured
    assert r.returncode == 1
    assert r.stderr.strip() == ("tlstrace trace: PUT /api/trace: 409: no HEP destination is "
                                "configured (hep_id)")
    for args, problem in ((["trace", "off", "--for", "10m"], "--for goes with 'trace on'"),
                          (["trace", "on", "--for", "soon"], "'soon' is not a duration"),
                          (["trace", "on", "--for", "0s"], "above 0")):
        r = tlstrace(*args, *where(relay))
        assert r.returncode == 1 and problem in r.stderr, r.stderr
    r = tlstrace("connections", "--api", "localhost:8080")
    assert r.returncode == 2 and "api_listen" in r.stderr


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600),
                                               ("1h30m", 5400), ("1.5h", 5400), ("2m5s", 125)])
def test_durations(text: str, seconds: float) -> None:
    from tlstrace.client import parse_duration

    assert parse_duration(text) == seconds


def test_every_client_flag_is_documented() -> None:
    from pathlib import Path

    from tlstrace.cli import build_parser

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("trace", "connections", "reload", "check"):
        assert f"`tlstrace {name}" in readme, name
        for action in commands[name]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert any(f"{c}{flag}" in readme for c in "`[|"), (name, flag)
