"""`tlstrace trace|connections|reload` against the running sidecar: what an operator types, and
clear one-line errors when the API cannot be reached or wants a token."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

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
    return subprocess.run(
        [sys.executable, "-m", "tlstrace", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


@pytest.fixture
def sidecar(relay_factory: Factory, backend: SipBackend, sink: HepSink) -> RelayProcess:
    return relay_factory(
        {
            "api_token": TOKEN,
            "hep_id": [sink.hep_id],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


def where(relay: RelayProcess) -> list[str]:
    return ["--api", str(relay.config["api_listen"])]


def state(relay: RelayProcess) -> dict[str, object]:
    return httpx.get(
        f"{relay.api_url}/api/trace", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()  # type: ignore[no-any-return]


def test_trace_on_for_a_while_status_and_off(sidecar: RelayProcess) -> None:
    r = tlstrace("trace", "status", *where(sidecar), token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tracing off; HEP destinations: sink; 0 connection(s) traced")

    r = tlstrace("trace", "on", "--for", "10m", *where(sidecar), token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tracing on until ") and "left)" in r.stdout
    now = state(sidecar)
    assert now["tracing"] == "on" and 590 <= float(now["remaining_seconds"]) <= 600  # type: ignore[arg-type]
    assert (
        f"until {now['until']}" in tlstrace("trace", "status", *where(sidecar), token=TOKEN).stdout
    )

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
        assert header.split() == [
            "ID",
            "DIR",
            "PROTO",
            "STATE",
            "REMOTE",
            "LOCAL",
            "SNI",
            "TLS",
            "AGE",
            "MSG",
            "IN",
            "MSG",
            "OUT",
            "TRACED",
        ]
        assert f"127.0.0.1:{client.local_port}" in row.split()
        assert {"inbound", "tls", "phone.example", "TLSv1.3", "no"} <= set(row.split())
        assert total == "1 connection"
        r = tlstrace(
            "connections", "--json", "--direction", "inbound", *where(sidecar), token=TOKEN
        )
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
        "another)"
    ]


def test_401_says_what_to_do(sidecar: RelayProcess) -> None:
    for command in (["trace", "status"], ["connections"], ["reload"]):
        r = tlstrace(*command, *where(sidecar))
        assert r.returncode == 1
        api = sidecar.api_url
        assert r.stderr.strip() == (
            f"tlstrace {command[0]}: the API at {api} answered 401: "
            "it needs a token: set TLSTRACE_API_TOKEN"
        )
    r = tlstrace("trace", "on", *where(sidecar), token="wrong")
    assert "the token in TLSTRACE_API_TOKEN was refused" in r.stderr
    assert "wrong" not in r.stderr
    assert state(sidecar)["tracing"] == "off"


def test_errors_of_the_api_and_of_the_flags(relay: RelayProcess) -> None:
    r = tlstrace("trace", "on", *where(relay))  # no HEP destination configured
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "tlstrace trace: PUT /api/trace: 409: no HEP destination is configured (hep_id)"
    )
    for args, problem in (
        (["trace", "off", "--for", "10m"], "--for goes with 'trace on'"),
        (["trace", "on", "--for", "soon"], "'soon' is not a duration"),
        (["trace", "on", "--for", "0s"], "above 0"),
    ):
        r = tlstrace(*args, *where(relay))
        assert r.returncode == 1 and problem in r.stderr, r.stderr
    r = tlstrace("connections", "--api", "127.0.0.1")
    assert r.returncode == 2 and "api_listen" in r.stderr


def test_api_by_host_name(relay: RelayProcess) -> None:
    port = relay.config["api_listen"].rsplit(":", 1)[1]
    r = tlstrace("trace", "status", "--api", f"localhost:{port}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("tracing off")


def test_empty_api_flag_is_one_clear_line() -> None:
    r = tlstrace("trace", "status", "--api", "")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "tlstrace: configuration error: --api: api_listen: empty: give "
        "HOST:PORT of the sidecar's API (e.g. --api 127.0.0.1:8080)"
    )
    assert "None" not in r.stderr


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    r = tlstrace("trace", "status", "--config", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"tlstrace: configuration error: --config: {tmp_path}: Is a directory"
    )


class NotTlstrace(socketserver.ThreadingTCPServer):
    """A server on the API's port that is not tlstrace: `answer` is what it sends back."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        super().__init__(("127.0.0.1", 0), _Answer)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)
        assert isinstance(self.server, NotTlstrace)
        self.request.sendall(self.server.answer)


HTML = b"<html><body>It works!</body></html>"
NOT_TLSTRACE = {
    "SIP server": b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "web server, HTML": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
    + str(len(HTML)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + HTML,
    "web server, other JSON": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b'Content-Length: 11\r\nConnection: close\r\n\r\n{"ok": true}',
    "web server, 404 page": b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n"
    b"Content-Length: 9\r\nConnection: close\r\n\r\nnot found",
}


@pytest.mark.parametrize("answer", list(NOT_TLSTRACE.values()), ids=list(NOT_TLSTRACE))
def test_something_that_is_not_tlstrace(answer: bytes) -> None:
    server = NotTlstrace(answer)
    try:
        for command in (["trace", "status"], ["trace", "on"], ["connections"], ["reload"]):
            r = tlstrace(*command, "--api", server.where)
            assert r.returncode == 1, r.stderr
            assert "Traceback" not in r.stderr
            (line,) = r.stderr.strip().splitlines()
            assert line.startswith(
                f"tlstrace {command[0]}: not a tlstrace API at http://{server.where}"
            ), line
    finally:
        server.shutdown()
        server.server_close()


def test_the_token_is_taken_as_the_sidecar_takes_it(sidecar: RelayProcess, tmp_path: Path) -> None:
    # the file's api_token wins over TLSTRACE_API_TOKEN, in the sidecar and in the client
    config = tmp_path / "client.toml"
    config.write_text(f'api_listen = "{sidecar.config["api_listen"]}"\napi_token = "{TOKEN}"\n')
    r = tlstrace("trace", "status", "--config", str(config), token="wrong-token")
    assert r.returncode == 0, r.stderr
    config.write_text(f'api_listen = "{sidecar.config["api_listen"]}"\napi_token = "stale-token"\n')
    r = tlstrace("trace", "status", "--config", str(config), token=TOKEN)
    assert r.returncode == 1
    assert f"the token in api_token of {config} was refused" in r.stderr
    assert "stale-token" not in r.stderr


def test_a_token_that_could_never_authenticate(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    for text in ('api_token = " padded "', 'api_token = ""', 'api_token = "two words"'):
        config.write_text(text + "\n")
        r = tlstrace("trace", "status", "--config", str(config))
        assert r.returncode == 2
        assert r.stderr.startswith(f"tlstrace: configuration error: {config}: api_token: "), (
            r.stderr
        )
        assert "padded" not in r.stderr and "words" not in r.stderr
    r = tlstrace("trace", "status", token="tab\tinside")
    assert r.returncode == 2
    assert r.stderr.startswith("tlstrace: configuration error: TLSTRACE_API_TOKEN: api_token: ")
    assert "inside" not in r.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2m5s", 125)],
)
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
