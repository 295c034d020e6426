"""Tracing through the running relay, read back by receivers nobody here wrote: Kamailio's
sipcapture (SQLite) for SIP messages and per-call session records, hep-js for the connection
events (Kamailio drops HEP types other than 1, 5, 32, 99 and 100)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import hepjs
from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.kamailio_capture import KamailioCapture
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request, response_to

Factory = Callable[..., RelayProcess]


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KamailioCapture]:
    with KamailioCapture(tmp_path_factory.mktemp("kam"), transports=("udp",), ipv6=False) as k:
        yield k


def traced_relay(
    factory: Factory, backend: SipBackend, dests: list[str], **settings: Any
) -> RelayProcess:
    return factory(
        {
            "trace_on": True,
            "hep_id": dests,
            **settings,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


def events_of(sink: HepSink, conn_id: str | None = None) -> list[dict[str, str]]:
    out = []
    for p in sink.packets(89):
        if conn_id is None or (p.correlation_id or b"").decode() == conn_id:
            event = json.loads(p.payload)
            event["_cid"] = (p.correlation_id or b"").decode()
            out.append(event)
    return out


def test_sip_messages_and_session_records_in_kamailio(
    relay_factory: Factory, backend: SipBackend, kam: KamailioCapture, sink: HepSink
) -> None:
    relay = traced_relay(
        relay_factory, backend, [f"[kam]127.0.0.1:{kam.udp_port};transport=udp", sink.hep_id]
    )
    sent: dict[str, list[tuple[bytes, int]]] = {}
    started = time.time()
    for k in range(3):
        with TlsClient(relay.port()) as client:
            msgs = [
                request(m, f"call{k}-{i}@trace", i + 1, b"v=0\r\n" * (i * 300))
                for i, m in enumerate(["INVITE", "MESSAGE", "OPTIONS"])
            ]
            for m in msgs:
                client.send(m)
                client.recv_messages(1)
            sent[f"c{k}"] = [(m, client.local_port) for m in msgs]
            client.close_notify()
    ended = time.time()
    port = relay.port()
    rows = kam.wait_rows("sip_capture", 18, where="callid LIKE ?", params=("call%@trace",))
    rows = [r for r in rows if r["callid"].endswith("@trace")]
    assert len(rows) == 18
    for msgs in sent.values():
        for msg, cport in msgs:
            cid = msg.split(b"Call-ID: ")[1].split(b"\r\n")[0].decode()
            req = [r for r in rows if r["msg"] == msg]
            resp = [r for r in rows if r["msg"] == response_to(msg)]
            assert len(req) == 1 and len(resp) == 1, cid
            r = req[0]
            assert (r["source_ip"], r["source_port"]) == ("127.0.0.1", cport)
            assert (r["destination_ip"], r["destination_port"]) == ("127.0.0.1", port)
            assert (r["callid"], r["correlation_id"], r["type"]) == (cid, cid, 1)
            assert (r["family"], r["proto"], r["node"]) == (2, 2, "kam:1")
            assert started * 1e6 <= r["micro_ts"] <= ended * 1e6
            p = resp[0]
            assert (p["source_ip"], p["source_port"]) == ("127.0.0.1", port)
            assert (p["destination_ip"], p["destination_port"]) == ("127.0.0.1", cport)
            assert p["type"] == 2 and p["micro_ts"] >= r["micro_ts"]
    # one type-100 record per Call-ID, linked to the call, naming its TLS connection
    logs = kam.wait_rows("logs_capture", 9, where="correlation_id LIKE ?", params=("call%@trace",))
    assert sorted(r["correlation_id"] for r in logs) == sorted(
        f"call{k}-{i}@trace" for k in range(3) for i in range(3)
    )
    accepted = {e["_cid"] for e in events_of(sink) if e["Event"] == "ACCEPTED"}
    for r in logs:
        record = json.loads(r["msg"])
        assert record["type"] == "tls-session" and record["call_id"] == r["correlation_id"]
        assert record["connection_id"] in accepted
        assert record["tls_version"] == "TLSv1.3" and record["direction"] == "inbound"
        assert record["local_certificate"]["subject"] == "/O=tlstrace self-signed/CN=localhost"
        assert record["peer_certificate"] is None and "keylog" not in record
        assert r["type"] == 5 and r["node"] == "kam:1"


def test_connection_events_decoded_by_hepjs(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = traced_relay(relay_factory, backend, [sink.hep_id])
    with TlsClient(relay.port()) as client:
        client.send(request(call_id="ev@t"))
        client.recv_messages(1)
        cport = client.local_port
        client.close_notify()
    sink.wait(2, 89)
    raw = [d for d in sink.datagrams if d[6:] and b"\x00\x0b\x00\x07\x59" in d]
    decoded = hepjs.hepjs_decode(raw) if hepjs.available() else []
    events = events_of(sink)
    assert [e["Event"] for e in events] == ["ACCEPTED", "CLOSED"], events
    acc, closed = events
    assert acc["_cid"] == closed["_cid"] and acc["_cid"].isdigit()
    assert list(acc)[:6] == [
        "Protocol",
        "server-subject",
        "server-issuer",
        "Event",
        "Status",
        "Message",
    ]
    assert (acc["Protocol"], acc["Status"], acc["Message"]) == (
        "TLS",
        "SUCCESS",
        "Connection accepted...",
    )
    assert (closed["Status"], closed["Message"]) == ("SUCCESS", "EOF received")
    assert "master-key" not in acc and "keylog" not in acc
    # the layout is cJSON_Print's: a tab after the colon, one member per line
    payload = sink.packets(89)[0].payload.decode()
    assert payload.startswith('{\n\t"Protocol":\t"TLS",\n') and payload.endswith('"\n}')
    assert len(decoded) == 2
    for d in decoded:
        assert d is not None
        info = d["rcinfo"]
        assert (info["payloadType"], info["protocol"], info["captureId"]) == (89, 6, 1)
        assert (info["srcIp"], info["srcPort"]) == ("127.0.0.1", cport)
        assert (info["dstIp"], info["dstPort"]) == ("127.0.0.1", relay.port())
        assert info["correlation_id"] == acc["_cid"]


def test_tracing_off_sends_nothing(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = relay_factory(
        {"hep_id": [sink.hep_id], "listener": [RelayProcess.tls_listener(backend.port)]}
    )
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
    time.sleep(0.5)
    assert sink.datagrams == []


def test_homer5_events_and_ip_proto_22(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = traced_relay(
        relay_factory, backend, [sink.hep_id], trace_event_format="homer5", trace_ip_proto=22
    )
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
        client.close_notify()
    events = sink.wait(2, 89)
    assert events[0].payload == (
        b"TLS:/O=tlstrace self-signed/CN=localhost:"
        b"/O=tlstrace self-signed/CN=localhost:ACCEPTED:SUCCESS:"
        b"Connection accepted..."
    )
    assert events[1].payload == b"TLS:CLOSED:SUCCESS:EOF received"
    assert {p.ip_proto for p in sink.packets()} == {22}


def test_filters_include_and_exclude(
    relay_factory: Factory, backend: SipBackend, sink: HepSink
) -> None:
    relay = traced_relay(
        relay_factory,
        backend,
        [sink.hep_id],
        trace_filter=[
            {"action": "deny", "sni": "private.example"},
            {"action": "allow", "sni": "*.example"},
            {"action": "deny", "remote": "127.0.0.0/8"},
        ],
    )
    for name in ("private.example", "public.example", None):
        with TlsClient(relay.port(), server_hostname=name) as client:
            client.send(request(call_id=f"f-{name}"))
            client.recv_messages(1)
            client.close_notify()
    sink.wait(3)
    sink.settle()
    sip = {p.correlation_id for p in sink.packets(1)}
    assert sip == {b"f-public.example"}
    assert [e["Event"] for e in events_of(sink)] == ["ACCEPTED", "CLOSED"]


def test_keys_are_not_traced_unless_asked(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, tmp_path: Path
) -> None:
    relay = traced_relay(relay_factory, backend, [sink.hep_id])
    with TlsClient(relay.port()) as client:
        client.send(request())
        client.recv_messages(1)
    sink.wait(3)
    for p in sink.packets():
        assert b"TRAFFIC_SECRET" not in p.payload and b"CLIENT_RANDOM" not in p.payload
    assert "session keys are collected" not in relay.log


def test_trace_backend_leg(relay_factory: Factory, backend: SipBackend, sink: HepSink) -> None:
    relay = traced_relay(
        relay_factory, backend, [sink.hep_id], trace_backend=True, trace_sessions=False
    )
    with TlsClient(relay.port()) as client:
        req = request(call_id="be@t")
        client.send(req)
        client.recv_messages(1)
        cport = client.local_port
    conn = backend.wait_conns(1)[0]
    sip = sink.wait(4, 1)
    legs = [(p.src_port, p.dst_port, p.payload[:7]) for p in sip]
    assert (
        legs
        == [
            (cport, relay.port(), req[:7]),  # client -> tlstrace (TLS leg)
            (conn.peer[1], backend.port, req[:7]),  # tlstrace -> backend (TCP leg)
            (backend.port, conn.peer[1], b"SIP/2.0"),  # backend -> tlstrace
            (relay.port(), cport, b"SIP/2.0"),  # tlstrace -> client
        ]
    )


@pytest.mark.parametrize("key", ["s3cret", "wrong"])
def test_auth_key_node_name_and_capture_id(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, tmp_path: Path, key: str
) -> None:
    """sngrep (configured with the key s3cret) keeps what the relay sends with the right key
    and refuses it with a wrong one; the other identity chunks arrive as configured."""
    from tests.support.sngrep import SngrepHep

    with SngrepHep(tmp_path / "sngrep", auth_key="s3cret") as sng:
        relay = traced_relay(
            relay_factory,
            backend,
            [f"[sngrep]127.0.0.1:{sng.port};transport=udp", sink.hep_id],
            hep_auth_key=key,
            hep_node_name="edge-1",
            hep_capture_id=2001,
        )
        with TlsClient(relay.port()) as client:
            req = request("INVITE", f"auth-{key}@t", body=b"v=0\r\n")
            client.send(req)
            client.recv_messages(1)
            cport = client.local_port
        sink.wait(2, 1)
        sng.drain()
    # sngrep writes every payload it keeps; the SIP ones are what it decapsulated as SIP
    frames = [f for f in sng.frames() if f.payload.startswith((b"INVITE", b"SIP/2.0"))]
    for p in sink.packets():
        assert (p.auth_key, p.node_name, p.capture_id) == (key.encode(), b"edge-1", 2001)
    if key == "s3cret":
        assert [(f.src_port, f.dst_port, f.payload) for f in frames] == [
            (cport, relay.port(), req),
            (relay.port(), cport, response_to(req)),
        ]
    else:
        assert sng.frames() == []
