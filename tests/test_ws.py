"""SIP over WebSocket end to end: `tlstrace run` with wss: and ws: listeners, Python WebSocket
clients (wsproto over real sockets), real TCP backends, HEP to Kamailio's sipcapture."""

from __future__ import annotations

import asyncio
import json
import random
import string
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.kamailio_capture import KamailioCapture
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import client_context, response_to
from tests.support.ws import WsClient, frame, upgrade_request
from tlstrace.sip.framing import Message, SipFramer

Factory = Callable[..., RelayProcess]


def ws_listener(backend_port: int, scheme: str = "wss", **extra: Any) -> dict[str, Any]:
    return {
        "listen": f"{scheme}:127.0.0.1:{free_port()}",
        "backend": f"tcp:127.0.0.1:{backend_port}",
        **extra,
    }


def sip(
    method: str = "OPTIONS",
    call_id: str = "ws@t",
    cseq: int = 1,
    body: str = "",
    *,
    length: bool = True,
) -> str:
    lines = [
        f"{method} sip:bob@example.com SIP/2.0",
        f"Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK-{call_id}-{cseq}",
        "Max-Forwards: 70",
        f"From: <sip:alice@example.com>;tag=a-{cseq}",
        "To: <sip:bob@example.com>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    if length:
        lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def stream_form(msg: str) -> bytes:
    """What the backend must get: the message, with a Content-Length when it had none."""
    data = msg.encode()
    if b"\r\nContent-Length:" in data:
        return data
    head, _, body = data.partition(b"\r\n\r\n")
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


class EchoBackend:
    """A TCP SIP server that sends back every message it frames, byte for byte."""

    def __init__(self) -> None:
        self.received: dict[int, list[bytes]] = {}
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        backend = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.t = transport
                self.port = transport.get_extra_info("peername")[1]
                self.framer = SipFramer(max_msg_size=1 << 20, pingpong=False, max_chunks=None)
                with backend.lock:
                    backend.received[self.port] = []

            def data_received(self, data: bytes) -> None:
                msgs = [ev.data for ev in self.framer.feed(data) if isinstance(ev, Message)]
                with backend.lock:
                    backend.received[self.port] += msgs
                if msgs:
                    self.t.write(b"".join(msgs))

        async def start() -> asyncio.Server:
            return await self.loop.create_server(Proto, "127.0.0.1", 0)

        self.server = self.loop.run_until_complete(start())
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def echo() -> Iterator[EchoBackend]:
    b = EchoBackend()
    yield b
    b.stop()


def metric(relay: RelayProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{relay.api_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- basics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["wss", "ws"])
def test_register_over_websocket_and_the_api_shows_it(
    relay_factory: Factory, backend: SipBackend, scheme: str
) -> None:
    relay = relay_factory({"listener": [ws_listener(backend.port, scheme)]})
    client = WsClient(relay.port(), tls=scheme == "wss", path="/sip", user_agent="JsSIP 3.10")
    assert client.accepted is not None and client.accepted.subprotocol == "sip"
    msg = sip("REGISTER", length=False)
    client.send(msg)
    assert backend.wait_messages(1)[0] == stream_form(msg)
    assert client.recv() == response_to(stream_form(msg))
    conns = httpx.get(f"{relay.api_url}/api/connections", timeout=10).json()
    assert len(conns) == 1
    c = conns[0]
    assert (c["transport"], c["ws_path"], c["ws_origin"], c["user_agent"]) == (
        scheme,
        "/sip",
        "https://phone.example.com",
        "JsSIP 3.10",
    )
    assert c["state"] == "open" and c["messages_in"] == 1 and c["messages_out"] == 1
    assert (c["tls_version"] is not None) == (scheme == "wss")
    client.close()
    closed = client.wait_closed()
    assert closed is not None and closed.code == 1000
    assert backend.wait_closed(0)
    info = metric(relay, "tlstrace_listener_info", transport=scheme)
    assert info == 1


def test_backend_gone_sends_a_close_frame(relay_factory: Factory, backend: SipBackend) -> None:
    relay = relay_factory({"listener": [ws_listener(backend.port)]})
    client = WsClient(relay.port())
    client.send(sip())
    client.recv()
    backend.close_conn(0)
    closed = client.wait_closed()
    assert closed is not None and closed.code == 1000


# -- volume ----------------------------------------------------------------------------------------


def test_volume_1000_messages_over_20_wss_connections_byte_for_byte(
    relay_factory: Factory, echo: EchoBackend
) -> None:
    """1,000 messages of varied sizes (up to 30 kB, with and without Content-Length, text and
    binary frames) over 20 wss: connections to a TCP backend that echoes each one: the backend
    gets each byte for byte (a Content-Length added where it was missing), in order, and the
    client gets the same bytes back as one frame each, in order."""
    relay = relay_factory({"listener": [ws_listener(echo.port)]})
    rng = random.Random(13)
    plans: list[list[tuple[str, bool]]] = []
    for c in range(20):
        plan = []
        for i in range(50):
            size = rng.choice([0, 0, 10, 200, 1500, 4000, 16000, 30000])
            body = "".join(rng.choices(string.ascii_letters + "é€ \r\n", k=size))
            msg = sip("MESSAGE", f"vol-{c}@t", i + 1, body, length=rng.random() < 0.5)
            plan.append((msg, rng.random() < 0.3))
        plans.append(plan)
    errors: list[str] = []
    got: dict[int, tuple[int, list[bytes]]] = {}

    def run(c: int) -> None:
        try:
            client = WsClient(relay.port())
            port = client.sock.getsockname()[1]
            for msg, binary in plans[c]:
                client.send(msg.encode() if binary else msg)
            back = [client.recv(timeout=30) for _ in plans[c]]
            got[c] = (port, back)
            client.close()
            client.wait_closed()
        except Exception as e:  # reported below
            errors.append(f"client {c}: {e!r}")

    threads = [threading.Thread(target=run, args=(c,)) for c in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    total = 0
    for c, plan in enumerate(plans):
        expected = [stream_form(m) for m, _ in plan]
        _, back = got[c]
        assert back == expected, f"client {c}"
        total += len(back)
    assert total == 1000
    with echo.lock:
        at_backend = [msgs for msgs in echo.received.values() if msgs]
    assert sorted(at_backend) == sorted([stream_form(m) for m, _ in plan] for plan in plans)
    assert metric(relay, "tlstrace_sip_messages_total", direction="from_client") == 1000
    assert metric(relay, "tlstrace_sip_messages_total", direction="to_client") == 1000


# -- hostile input ---------------------------------------------------------------------------------


def _hostile(port: int, kind: str) -> tuple[str, bytes | int | None]:
    """One hostile client; returns (kind, the HTTP answer's first line or the close code)."""
    if kind in ("no_sip_subprotocol", "origin", "bad_request", "upgrade_too_large", "host"):
        c = WsClient(port, upgrade=False)
        req = {
            "no_sip_subprotocol": upgrade_request(protocols=("chat",)),
            "origin": upgrade_request(origin="https://evil.example"),
            "bad_request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "upgrade_too_large": upgrade_request(extra=[("X-Pad", "a" * 9000)]),
            "host": upgrade_request(host="a b"),
        }[kind]
        c.send_raw(req)
        answer = c.read_http().split(b"\r\n", 1)[0]
        c.shut()
        return kind, answer
    if kind == "upgrade_timeout":
        c = WsClient(port, upgrade=False)
        c.send_raw(upgrade_request()[:30])
        c.wait_closed(timeout=15)
        c.shut()
        return kind, None
    c = WsClient(port)
    data = {
        "unmasked_frame": frame(0x1, b"OPTIONS", mask=False),
        "fragmented_control": frame(0x9, b"ping", fin=False),
        "protocol_error": frame(0x3, b"x"),
        "invalid_utf8": frame(0x1, b"OPTIONS \xff"),
        "message_too_large": frame(0x2, b"x" * 70000),
        "not_sip": frame(0x1, sip(body="abc").replace("Length: 3", "Length: 1").encode()),
    }[kind]
    c.send_raw(data)
    closed = c.wait_closed()
    c.shut()
    return kind, closed.code if closed is not None else None


HOSTILE = {
    "no_sip_subprotocol": b"HTTP/1.1 400 ",
    "origin": b"HTTP/1.1 403 ",
    "bad_request": b"HTTP/1.1 400 ",
    "upgrade_too_large": b"HTTP/1.1 431 ",
    "host": b"HTTP/1.1 400 ",
    "upgrade_timeout": None,
    "unmasked_frame": 1002,
    "fragmented_control": 1002,
    "protocol_error": 1002,
    "invalid_utf8": 1007,
    "message_too_large": 1009,
    "not_sip": 1008,
}


def test_hostile_input_beside_legitimate_clients(
    relay_factory: Factory, backend: SipBackend
) -> None:
    relay = relay_factory(
        {
            "ws_origins": ["https://phone.example.com"],
            "ws_upgrade_timeout": 1000,
            "listener": [ws_listener(backend.port)],
        }
    )
    port = relay.port()
    stop = threading.Event()
    legit_errors: list[str] = []
    legit_done = [0]

    def legitimate(n: int) -> None:
        try:
            client = WsClient(port)
            i = 0
            while not stop.is_set() or i < 5:
                i += 1
                client.send(sip(call_id=f"legit-{n}@t", cseq=i, length=i % 2 == 0))
                answer = client.recv()
                assert answer.startswith(b"SIP/2.0 200 OK"), answer
                legit_done[0] += 1
            client.close()
            closed = client.wait_closed()
            assert closed is not None and closed.code == 1000
        except Exception as e:
            legit_errors.append(f"legit {n}: {e!r}")

    legit = [threading.Thread(target=legitimate, args=(n,)) for n in range(4)]
    for t in legit:
        t.start()
    results: list[tuple[str, bytes | int | None]] = []
    lock = threading.Lock()

    def hostile(kind: str) -> None:
        r = _hostile(port, kind)
        with lock:
            results.append(r)

    attackers = [threading.Thread(target=hostile, args=(k,)) for k in HOSTILE for _ in range(2)]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(60)
    stop.set()
    for t in legit:
        t.join(60)
    assert not legit_errors, legit_errors
    assert legit_done[0] >= 20
    assert len(results) == 2 * len(HOSTILE)
    for kind, answer in results:
        expected = HOSTILE[kind]
        if isinstance(expected, bytes):
            assert isinstance(answer, bytes) and answer.startswith(expected.strip()), (kind, answer)
        elif expected is not None:
            assert answer == expected, (kind, answer)
    for kind in HOSTILE:
        assert metric(relay, "tlstrace_ws_refused_total", reason=kind) == 2, kind
    log = relay.log
    assert "WebSocket refused (unmasked_frame" in log
    assert "Traceback" not in log


# -- tracing ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KamailioCapture]:
    with KamailioCapture(tmp_path_factory.mktemp("kam"), transports=("udp",), ipv6=False) as k:
        yield k


def test_wss_traced_to_kamailio_sipcapture(
    relay_factory: Factory, backend: SipBackend, kam: KamailioCapture
) -> None:
    with HepSink() as sink:
        relay = relay_factory(
            {
                "trace_on": True,
                "hep_id": [f"[kam]127.0.0.1:{kam.udp_port};transport=udp", sink.hep_id],
                "listener": [ws_listener(backend.port)],
            }
        )
        started = time.time()
        client = WsClient(relay.port(), path="/ws", user_agent="JsSIP 3.10.1")
        cport = client.sock.getsockname()[1]
        msg = sip("REGISTER", "wss-trace@t", length=False)
        client.send(msg)
        answer = client.recv()
        client.close()
        client.wait_closed()
        port = relay.port()
        rows = kam.wait_rows("sip_capture", 2, where="callid = ?", params=("wss-trace@t",))
        req = next(r for r in rows if r["method"] == "REGISTER")
        resp = next(r for r in rows if r["method"] != "REGISTER")
        # the browser's address, the WSS transport (its Via), the message as relayed
        assert (req["source_ip"], req["source_port"]) == ("127.0.0.1", cport)
        assert (req["destination_ip"], req["destination_port"]) == ("127.0.0.1", port)
        assert req["via_1"].startswith("SIP/2.0/WSS ")
        assert req["msg"] == stream_form(msg) and resp["msg"] == answer
        assert req["correlation_id"] == "wss-trace@t" and req["micro_ts"] >= started * 1e6
        # Kamailio's sipcapture maps only 6 and 17 to a transport: 3 is stored as 0
        assert req["proto"] == 0
        sink.wait(2, 1)
        sip_packets = [p for p in sink.packets(1) if b"wss-trace@t" in p.payload]
        assert sip_packets and {p.ip_proto for p in sip_packets} == {3}
        sink.wait(2, 89)
        events = [json.loads(p.payload) for p in sink.packets(89)]
        assert [(e["Protocol"], e["Event"]) for e in events] == [
            ("WSS", "ACCEPTED"),
            ("WSS", "CLOSED"),
        ]
        assert events[0]["Status"] == "SUCCESS" and "server-subject" in events[0]
        assert {p.ip_proto for p in sink.packets(89)} == {3}
        records = [json.loads(p.payload) for p in sink.packets(100)]
        assert len(records) == 1
        rec = records[0]
        assert (rec["transport"], rec["ws_path"], rec["user_agent"]) == (
            "wss",
            "/ws",
            "JsSIP 3.10.1",
        )
        assert rec["tls_version"] == "TLSv1.3" and rec["call_id"] == "wss-trace@t"


def test_wss_has_the_server_domains_sni_and_client_certificates_of_tls(
    relay_factory: Factory, backend: SipBackend, pki: Pki
) -> None:
    server = pki.leaf("mtls.example", names=["mtls.example"], tag="ws-mtls")
    with HepSink() as sink:
        relay = relay_factory(
            {
                "trace_on": True,
                "hep_id": [sink.hep_id],
                "server_domain": [
                    {
                        "name": "default",
                        "match_sip_domain": ["mtls.example"],
                        "certificate": str(server.cert),
                        "private_key": str(server.key),
                        "client_cert": "required",
                        "ca_list": str(pki.ca_file),
                    }
                ],
                "listener": [ws_listener(backend.port)],
            }
        )
        phone = pki.leaf("webphone.example", client=True, tag="ws-phone")
        ctx = client_context(cert=str(phone.cert), key=str(phone.key))
        client = WsClient(relay.port(), context=ctx, sni="mtls.example")
        client.send(sip("REGISTER", "mtls@t"))
        assert client.recv().startswith(b"SIP/2.0 200 OK")
        (conn,) = httpx.get(f"{relay.api_url}/api/connections", timeout=10).json()
        assert conn["transport"] == "wss" and conn["sni"] == "mtls.example"
        assert conn["server_domain"] == "default"
        assert "webphone.example" in conn["peer_subject"]
        client.close()
        client.wait_closed()
        # no client certificate: the TLS handshake fails, as on tls:
        with pytest.raises((AssertionError, OSError)):
            WsClient(relay.port(), context=client_context(), sni="mtls.example", timeout=5)
        relay.wait_log("handshake failed: certificate_required")
        sink.wait(3, 89)
        events = [json.loads(p.payload) for p in sink.packets(89)]
        failed = [e for e in events if e["Status"] == "FAILURE"]
        assert failed and failed[0]["Protocol"] == "WSS"
        assert failed[0]["Reason"] == "certificate_required"
        ok = [e for e in events if e["Event"] == "ACCEPTED" and e["Status"] == "SUCCESS"]
        assert ok and "webphone.example" in ok[0]["client-subject"]
