"""Tracing of the TLS layer: handshake failures as FAILURE events, outbound CONNECTED events,
session keys (off unless asked, file mode 0600), and decryption of a real capture with the keys
that arrived over HEP (tshark), TLS 1.2 and 1.3, inbound and outbound."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backend import SipBackend
from tests.support.capture import LoopbackCapture, decrypted_sip
from tests.support.hepsink import HepSink
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, client_context, request, response_to
from tests.test_outbound import LocalSipServer, client_domain, peer_context, tcp_listener

Factory = Callable[..., RelayProcess]


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def events(sink: HepSink) -> list[dict[str, str]]:
    out = []
    for p in sink.packets(89):
        e = json.loads(p.payload)
        e["_cid"] = (p.correlation_id or b"").decode()
        out.append(e)
    return out


def by_connection(sink: HepSink) -> dict[str, list[dict[str, str]]]:
    conns: dict[str, list[dict[str, str]]] = {}
    for e in events(sink):
        conns.setdefault(e["_cid"], []).append(e)
    return conns


def attempt(
    port: int,
    *,
    ctx: ssl.SSLContext | None = None,
    raw: bytes | None = None,
    sni: str | None = None,
) -> None:
    """One connection that is expected to fail its handshake."""
    if raw is not None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(raw)
            with contextlib.suppress(OSError):
                s.recv(100)
        return
    try:
        with TlsClient(port, ctx=ctx, server_hostname=sni, timeout=10) as c:
            c.send(request())
            c.wait_closed()
    except (ssl.SSLError, OSError):
        pass


def test_each_handshake_failure_is_one_failure_event(
    relay_factory: Factory, backend: SipBackend, pki: Pki, sink: HepSink
) -> None:
    server = pki.leaf("mtls.example", tag="fail-server")
    relay = relay_factory(
        {
            "trace_on": True,
            "hep_id": [sink.hep_id],
            "tls_handshake_timeout": 400,
            "server_domain": [
                {
                    "name": "default",
                    "certificate": str(server.cert),
                    "private_key": str(server.key),
                    "client_cert": "required",
                    "ca_list": str(pki.ca_file),
                    "max_version": "TLSv1.3",
                    "match_sip_domain": ["mtls.example", "none"],
                }
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    port = relay.port()
    phone = pki.leaf("phone.example", client=True, tag="fail-phone")
    rogue = pki.leaf("rogue.example", client=True, untrusted=True, tag="fail-rogue")
    old = client_context(
        cert=str(phone.cert), key=str(phone.key), max_version=ssl.TLSVersion.TLSv1_2
    )
    old.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")  # the server has an ECDSA key: no match
    cases: list[tuple[str, dict[str, Any]]] = [
        ("certificate_required", {}),
        ("unknown_ca", {"ctx": client_context(cert=str(rogue.cert), key=str(rogue.key))}),
        ("no_shared_cipher", {"ctx": old}),
        (
            "unrecognized_name",
            {
                "ctx": client_context(cert=str(phone.cert), key=str(phone.key)),
                "sni": "other.example",
            },
        ),
        ("not_tls", {"raw": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}),
        ("plain_sip", {"raw": request()}),
        ("handshake_timeout", {"raw": b"\x16\x03\x01\x00\x40" + b"\x01" * 10}),
    ]
    for reason, kw in cases:
        before = set(by_connection(sink))
        attempt(port, **kw)
        deadline = time.monotonic() + 10
        while True:
            new = {cid: evs for cid, evs in by_connection(sink).items() if cid not in before}
            if any(e["Event"] == "CLOSED" for evs in new.values() for e in evs):
                break
            assert time.monotonic() < deadline, f"{reason}: no events"
            time.sleep(0.05)
        assert len(new) == 1, (reason, new)
        (evs,) = new.values()
        assert [(e["Event"], e["Status"]) for e in evs] == [
            ("ACCEPTED", "FAILURE"),
            ("CLOSED", "SUCCESS"),
        ], reason
        assert evs[0]["Reason"] == reason
        assert evs[0]["Message"]
        assert evs[1]["Message"] == "Handshake failed"
    # a good phone still gets through, and its ACCEPTED names its certificate
    ok = client_context(cert=str(phone.cert), key=str(phone.key))
    with TlsClient(port, ctx=ok, server_hostname="mtls.example") as c:
        c.send(request())
        c.recv_messages(1)
    accepted = [e for e in events(sink) if e["Status"] == "SUCCESS" and e["Event"] == "ACCEPTED"]
    assert accepted[-1]["client-subject"] == "/O=tlstrace tests/CN=phone.example"
    assert accepted[-1]["client-issuer"] == "/O=tlstrace/CN=tlstrace test CA"
    assert accepted[-1]["server-subject"] == "/O=tlstrace tests/CN=mtls.example"


def test_a_port_probe_is_not_a_failure(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(
        {
            "trace_on": True,
            "hep_id": [sink.hep_id],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    for _ in range(3):
        socket.create_connection(("127.0.0.1", relay.port())).close()
    time.sleep(0.5)
    assert sink.packets() == []


def test_outbound_connection_events_and_messages(
    relay_factory: Factory, pki: Pki, sink: HepSink
) -> None:
    with SipBackend(ssl_context=peer_context(pki)) as peer:
        relay = relay_factory(
            {
                "trace_on": True,
                "hep_id": [sink.hep_id],
                "client_domain": [client_domain(pki, "default", server_name="peer.example")],
                "listener": [tcp_listener(peer.port)],
            }
        )
        local = LocalSipServer(relay.port())
        req = request("INVITE", "outbound@t")
        local.send(req)
        local.recv_messages(1)
        (ev,) = sink.wait(1, 89)
        connected = json.loads(ev.payload)
        assert (connected["Event"], connected["Status"]) == ("CONNECTED", "SUCCESS")
        assert connected["Message"] == "Successfully connected..."
        # as OpenSIPS: client-* is the peer's certificate, server-* our own
        assert connected["client-subject"] == "/O=tlstrace tests/CN=peer.example"
        assert connected["server-subject"] == "/O=tlstrace tests/CN=default.client.example"
        assert ev.src_port == peer.port  # remote as source, as OpenSIPS does
        sip = sink.wait(2, 1)
        assert [p.payload for p in sip] == [req, response_to(req)]
        assert (sip[0].dst_port, sip[1].src_port) == (peer.port, peer.port)
        local.close()


def keylog_from_events(sink: HepSink) -> list[str]:
    lines: list[str] = []
    for e in events(sink):
        lines += e.get("keylog", "").splitlines()
    return lines


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_inbound_capture_decrypts_with_keys_from_hep(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, tmp_path: Path, version: str
) -> None:
    relay = relay_factory(
        {
            "trace_on": True,
            "trace_keys": True,
            "hep_id": [sink.hep_id],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    port = relay.port()
    cap = LoopbackCapture(tmp_path / "in.pcapng", port)
    tls = ssl.TLSVersion[version.replace(".", "_")]
    calls = [f"dec-{version}-{i}@t" for i in range(3)]
    with TlsClient(port, ctx=client_context(min_version=tls, max_version=tls)) as client:
        assert client.sock.version() == version
        for i, cid in enumerate(calls):
            client.send(request("INVITE", cid, i + 1, b"v=0\r\n"))
            client.recv_messages(1)
        client.close_notify()
    cap.stop()
    lines = keylog_from_events(sink)
    labels = {line.split()[0] for line in lines}
    if version == "TLSv1.2":
        assert labels == {"CLIENT_RANDOM"}
        (acc,) = [e for e in events(sink) if e["Event"] == "ACCEPTED"]
        assert acc["master-key"] == lines[0].split()[2].lower()
    else:
        assert labels == {
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            "CLIENT_TRAFFIC_SECRET_0",
            "SERVER_TRAFFIC_SECRET_0",
            "EXPORTER_SECRET",
        }
    keys = tmp_path / "keys.log"
    keys.write_text("\n".join(lines) + "\n")
    assert decrypted_sip(tmp_path / "in.pcapng", port, None) == []
    seen = decrypted_sip(tmp_path / "in.pcapng", port, keys)
    for cid in calls:
        assert (cid, "INVITE") in seen and (cid, "200") in seen, seen


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_outbound_capture_decrypts_with_keys_from_hep(
    relay_factory: Factory, pki: Pki, sink: HepSink, tmp_path: Path, version: str
) -> None:
    with SipBackend(ssl_context=peer_context(pki)) as peer:
        relay = relay_factory(
            {
                "trace_on": True,
                "trace_keys": True,
                "hep_id": [sink.hep_id],
                "client_domain": [
                    client_domain(
                        pki,
                        "default",
                        server_name="peer.example",
                        max_version=version,
                        min_version=version,
                    )
                ],
                "listener": [tcp_listener(peer.port)],
            }
        )
        cap = LoopbackCapture(tmp_path / "out.pcapng", peer.port)
        local = LocalSipServer(relay.port())
        calls = [f"out-{version}-{i}@t" for i in range(2)]
        for i, cid in enumerate(calls):
            local.send(request("MESSAGE", cid, i + 1, b"hello"))
            local.recv_messages(1)
        local.close()
        cap.stop()
    keys = tmp_path / "keys.log"
    keys.write_text("\n".join(keylog_from_events(sink)) + "\n")
    seen = decrypted_sip(tmp_path / "out.pcapng", peer.port, keys)
    for cid in calls:
        assert (cid, "MESSAGE") in seen and (cid, "200") in seen, seen


def test_keylog_file_is_private_and_complete(
    relay_factory: Factory, backend: SipBackend, tmp_path: Path
) -> None:
    keyfile = tmp_path / "secret" / "keys.log"
    keyfile.parent.mkdir()
    relay = relay_factory(
        {"keylog_file": str(keyfile), "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    for _ in range(3):
        with TlsClient(relay.port()) as c:
            c.send(request())
            c.recv_messages(1)
    deadline = time.monotonic() + 5
    while (
        not keyfile.exists() or keyfile.read_text().count("\n") < 15
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keyfile.stat().st_mode & 0o777 == 0o600
    lines = keyfile.read_text().splitlines()
    assert len(lines) == 15  # five TLS 1.3 secrets per connection
    assert all(len(line.split()) == 3 for line in lines)
    for line in lines:
        assert line.split()[2] not in relay.log  # secrets never reach the log
