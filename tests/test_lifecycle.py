"""Start-up, graceful shutdown on SIGTERM/SIGINT, certificate reload on SIGHUP."""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.backend import SipBackend
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request
from tests.test_tls_server import peer_cn

Factory = Callable[..., RelayProcess]


def test_startup_log_says_what_and_where(relay: RelayProcess, backend: SipBackend) -> None:
    log = relay.wait_log("listening on")
    assert f"listening on tls:127.0.0.1:{relay.port()}" in log
    assert "default-cert.pem" in log
    assert f"relaying to tcp:127.0.0.1:{backend.port}" in log


def test_generated_certificate_is_kept_and_reused(
    relay_factory: Factory, backend: SipBackend, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cfg = {"state_dir": str(state), "listener": [RelayProcess.tls_listener(backend.port)]}
    first = relay_factory(cfg)
    first.wait_log("generated a self-signed certificate")
    cert = (state / "default-cert.pem").read_bytes()
    assert (state / "default-key.pem").stat().st_mode & 0o077 == 0
    first.stop()
    second = relay_factory(cfg)
    second.wait_log("listening on")
    assert "generated a self-signed" not in second.log
    assert (state / "default-cert.pem").read_bytes() == cert


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_flushes_in_flight_messages(
    relay: RelayProcess, backend: SipBackend, sig: signal.Signals
) -> None:
    backend.answer = False
    client = TlsClient(relay.port())
    msgs = [request("MESSAGE", f"m{i}@t", i + 1, b"x" * 2000) for i in range(200)]
    client.send(b"".join(msgs))
    backend.wait_messages(1)
    relay.signal(sig)
    assert relay.proc.wait(15) == 0
    assert backend.wait_messages(200) == msgs
    assert client.wait_closed()
    assert "shutting down" in relay.log


def test_shutdown_relays_what_a_slow_backend_had_not_taken(
    relay_factory: Factory, backend: SipBackend
) -> None:
    """At the signal the relay has stopped reading the client (the backend does not read):
    what the client sent is still in the relay's socket or the client's. It is relayed before
    the connection closes."""
    relay = relay_factory(
        {"conn_buffer_limit": 4096, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    backend.answer = False
    backend.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    backend.pause_all()
    client = TlsClient(relay.port())
    # 10 MB: more than the relay's socket buffers towards the backend hold (at most 4 MB
    # with Linux's default tcp_wmem), so that part of it cannot leave the client's socket
    msgs = [request("MESSAGE", f"s{i}@t", i + 1, b"x" * 2000) for i in range(5000)]
    sender = threading.Thread(target=client.send, args=(b"".join(msgs),))
    sender.start()
    time.sleep(0.3)
    relay.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert relay.proc.poll() is None  # still handing over what the client sent
    backend.resume_all()
    sender.join()
    assert relay.proc.wait(15) == 0
    assert backend.wait_messages(5000) == msgs
    assert client.wait_closed()
    assert "still had data on the way" not in relay.log


def test_shutdown_is_bounded(relay_factory: Factory, backend: SipBackend) -> None:
    """A client that reads nothing cannot hold the process past shutdown_timeout."""
    relay = relay_factory(
        {"shutdown_timeout": 1.0, "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    with TlsClient(relay.port()) as client:
        client.send(request())
        backend.wait_messages(1)
        for i in range(20):
            backend.send(0, request("MESSAGE", f"flood{i}@t", body=b"y" * 60000))
        time.sleep(0.5)
        started = time.monotonic()
        relay.signal(signal.SIGTERM)
        assert relay.proc.wait(15) == 0
        assert time.monotonic() - started < 10


def test_reload_swaps_certificates_for_new_connections(
    relay_factory: Factory, backend: SipBackend, pki: Pki, tmp_path: Path
) -> None:
    first = pki.leaf("first.example")
    second = pki.leaf("second.example")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    relay = relay_factory(
        {
            "server_domain": [
                {"name": "default", "certificate": str(cert), "private_key": str(key)}
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    old = TlsClient(relay.port())
    assert peer_cn(old) == "first.example"
    old.send(request(call_id="old1"))
    old.recv_messages(1)

    shutil.copy(second.cert, cert)
    shutil.copy(second.key, key)
    relay.signal(signal.SIGHUP)
    relay.wait_log("reloaded")
    with TlsClient(relay.port()) as new:
        assert peer_cn(new) == "second.example"
    old.send(request(call_id="old2", cseq=2))  # the open connection carries on
    old.recv_messages(1)

    cert.write_text("not a certificate\n")
    relay.signal(signal.SIGHUP)
    log = relay.wait_log("reload failed")
    assert "server_domain[0]" in log
    with TlsClient(relay.port()) as after:
        assert peer_cn(after) == "second.example"
    old.send(request(call_id="old3", cseq=3))
    old.recv_messages(1)
    old.close()
    assert "BEGIN PRIVATE KEY" not in relay.log


def test_sighup_during_start_up_reloads_once_up(
    relay_factory: Factory, backend: SipBackend
) -> None:
    """A SIGHUP that arrives while the sidecar is still starting (a config-management tool
    reloading everything at once) does not end the process: the reload runs once it is up."""
    relay = relay_factory({"listener": [RelayProcess.tls_listener(backend.port)]}, wait=False)
    relay.wait_log("starting")
    relay.signal(signal.SIGHUP)
    relay.wait_ready()
    relay.wait_log("INFO tlstrace: reloaded:", timeout=15)
    assert relay.proc.poll() is None
    c = TlsClient(relay.port())
    c.send(request(call_id="after-early-hup@t"))
    assert c.recv_messages(1)
