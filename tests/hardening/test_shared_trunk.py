"""A trunk shared by several local connections (issue 11, item 9).

Kamailio and OpenSIPS open one TCP connection per worker to the same address, so several local
connections share one tcp: listener and its pooled TLS connection to the peer. Every response
must reach the connection that sent its request, every in-dialog request from the peer the
connection of its dialog, and requests with no known connection go to `local_target`.

The local clients are SIPp (Debian sip-tester), one TCP connection each; the TLS peer is the
real Kamailio from Debian, or a scripted peer that sends requests of its own (a re-INVITE and
a BYE in each call); `local_target` is the real Kamailio as the local SIP server.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import LegitTraffic, Metrics
from tests.support import kamailio_sip, sipp
from tests.support.backend import SipBackend
from tests.support.kamailio_peer import KamailioTlsPeer
from tests.support.kamailio_sip import KamailioSip
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess
from tests.support.sip import request, response_to
from tlstrace.sip.framing import Message, SipFramer

Factory = Callable[..., RelayProcess]
Legit = Callable[..., LegitTraffic]

needs_sipp = pytest.mark.skipif(not sipp.available(), reason="sipp is not installed: make deps")
needs_kamailio = pytest.mark.skipif(
    not kamailio_sip.available(), reason="kamailio is not installed: make deps"
)


def peer_files(pki: Pki) -> tuple[Path, Path]:
    files = pki.leaf("peer.example", names=["peer.example", "127.0.0.1"], tag="trunk-peer")
    return files.cert, files.key


def trunk_config(
    pki: Pki, peer_port: int, backend_port: int | None = None, **listener: Any
) -> dict[str, Any]:
    listeners: list[dict[str, Any]] = [
        {"listen": f"tcp:127.0.0.1:{free_port()}", "peer": f"tls:127.0.0.1:{peer_port}", **listener}
    ]
    if backend_port is not None:  # legitimate traffic on a tls: listener alongside
        listeners.append(RelayProcess.tls_listener(backend_port))
    return {
        "client_domain": [
            {"name": "default", "ca_list": str(pki.ca_file), "server_name": "peer.example"}
        ],
        "listener": listeners,
    }


@pytest.fixture
def kamailio_peer(pki: Pki, tmp_path: Path) -> Iterator[KamailioTlsPeer]:
    if not kamailio_sip.available():
        pytest.skip("kamailio is not installed: make deps")
    cert, key = peer_files(pki)
    k = KamailioTlsPeer(tmp_path / "kamailio-peer", cert, key)
    yield k
    k.stop()


def run_sipp(
    tmp_path: Path, port: int, clients: int, calls: int, scenario: str | Path = "uac"
) -> list[sipp.SippResult]:
    procs = [
        sipp.Sipp(tmp_path / "sipp", f"client{i}", port, calls=calls, rate=10, scenario=scenario)
        for i in range(clients)
    ]
    return [p.wait() for p in procs]


def assert_all_calls_completed(results: list[sipp.SippResult], calls: int) -> None:
    summary = [(r.returncode, r.successful, r.failed, r.out_of_call, r.dead_call) for r in results]
    totals = (
        f"{sum(r.successful for r in results)} of {calls * len(results)} calls "
        f"completed, {sum(r.out_of_call for r in results)} out-of-call messages; "
        f"(rc, completed, failed, out-of-call, dead-call) per client: {summary}"
    )
    assert summary == [(0, calls, 0, 0, 0)] * len(results), (totals, results[0].errors[:2000])


def tables_emptied_by_closes(relay: RelayProcess) -> None:
    """Every call ended (its dialog went with its BYE's 200) and every SIPp client closed its
    connection (its transactions went with it): the routing tables are empty, without waiting
    for any expiry."""

    def empty() -> bool:
        m = Metrics.scrape(relay)
        return all(
            m.get("tlstrace_trunk_table_entries", table=t) == 0
            for t in ("transactions", "peer_transactions", "dialogs")
        )

    wait_for(empty)


# -- calls placed by the local side ---------------------------------------------------------


@needs_sipp
@pytest.mark.parametrize(("clients", "calls"), [(2, 40), (8, 15)], ids=["2-clients", "8-clients"])
def test_every_sipp_client_gets_its_own_replies(
    relay_factory: Factory,
    pki: Pki,
    kamailio_peer: KamailioTlsPeer,
    tmp_path: Path,
    legit: Legit,
    record: Record,
    clients: int,
    calls: int,
) -> None:
    """SIPp clients, one TCP connection each, place calls at the same time through one tcp:
    listener to Kamailio over one pooled TLS connection (INVITE/100/180/200/ACK/BYE/200):
    every call completes, no client sees a message of another's call."""
    with SipBackend() as backend:
        relay = relay_factory(trunk_config(pki, kamailio_peer.port, backend.port))
        before = Metrics.scrape(relay)
        traffic = legit(relay.port(1), clients=2, newcomers=False)
        results = run_sipp(tmp_path, relay.port(0), clients, calls)
        legit_result = traffic.check(backend)
    assert_all_calls_completed(results, calls)
    total = clients * calls
    assert kamailio_peer.count("INVITE") == total and kamailio_peer.count("BYE") == total
    after = Metrics.scrape(relay)
    # 100, 180, 200 per INVITE and 200 per BYE, each by its transaction; nothing dropped
    routed = after.delta(before, "tlstrace_trunk_routed_total", by="transaction")
    assert routed == 4 * total
    assert after.delta(before, "tlstrace_trunk_routed_total") == routed
    assert after.delta(before, "tlstrace_messages_dropped_total") == 0
    assert after.get("tlstrace_connections_opened_total") == 1  # one pooled TLS connection
    tables_emptied_by_closes(relay)
    record(
        clients=clients,
        calls_each=calls,
        completed=sum(r.successful for r in results),
        failed=sum(r.failed for r in results),
        out_of_call=sum(r.out_of_call for r in results),
        routed_by_transaction=routed,
        legit_sent=legit_result.sent,
        legit_errors=len(legit_result.errors),
    )


# -- requests from the peer -----------------------------------------------------------------


PEER_ENDS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call the peer ends">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
Content-Length: 0

]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


def _headers(msg: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for line in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.setdefault(name.strip().lower(), value.strip())
    return out


class EndingPeer:
    """A TLS peer that answers each INVITE with 100/180/200 and, once the call is up, sends a
    re-INVITE and then a BYE of its own in that dialog, each `delay` seconds after the
    message before (meanwhile other local connections send: each request must still reach
    the local connection that placed the call). It counts the calls whose BYE was answered,
    and every message it did not expect."""

    def __init__(self, ssl_context: ssl.SSLContext, delay: float = 0.15) -> None:
        self.ctx = ssl_context
        self.delay = delay
        self.completed = 0
        self.unexpected: list[bytes] = []
        self.calls: dict[bytes, dict[str, bytes]] = {}
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        peer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                self.transport = transport
                self.framer = SipFramer(max_msg_size=1 << 20, pingpong=False, max_chunks=None)

            def data_received(self, data: bytes) -> None:
                out: list[bytes] = []
                later: list[bytes] = []
                for ev in self.framer.feed(data):
                    if isinstance(ev, Message):
                        now, then = peer.handle(ev.data)
                        out += now
                        later += then
                if out:
                    self.transport.write(b"".join(out))
                if later:
                    peer.loop.call_later(peer.delay, self.transport.write, b"".join(later))

        async def start() -> asyncio.Server:
            return await self.loop.create_server(Proto, "127.0.0.1", 0, ssl=self.ctx)

        self.server = self.loop.run_until_complete(start())
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def _request(self, call: dict[str, bytes], method: bytes, cseq: int) -> bytes:
        lines = [
            method + b" " + call["uri"] + b" SIP/2.0",
            # the ACK of a 2xx is a transaction of its own: a branch of its own
            b"Via: SIP/2.0/TLS 127.0.0.1:%d;branch=z9hG4bKpeer-%s-%d-%s"
            % (self.port, call["tag"], cseq, method),
            b"From: " + call["to"] + b";tag=" + call["tag"],
            b"To: " + call["from"],
            b"Call-ID: " + call["call_id"],
            b"CSeq: %d %s" % (cseq, method),
            b"Contact: <sip:peer@127.0.0.1:%d;transport=tls>" % self.port,
            b"Max-Forwards: 70",
            b"Content-Length: 0",
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def handle(self, msg: bytes) -> tuple[list[bytes], list[bytes]]:
        """What to send at once, and what to send after `delay`."""
        h = _headers(msg)
        call_id = h.get(b"call-id", b"")
        call = self.calls.get(call_id)
        first = msg.split(b"\r\n", 1)[0]
        if first.startswith(b"INVITE ") and call is None:
            tag = b"p%d" % len(self.calls)
            self.calls[call_id] = call = {
                "tag": tag,
                "call_id": call_id,
                "from": h[b"from"],
                "to": h[b"to"],
                "uri": h[b"contact"].strip(b"<>"),
                "state": b"answered",
            }
            with_tag = msg.replace(b"\r\nTo: " + h[b"to"], b"\r\nTo: " + h[b"to"] + b";tag=" + tag)
            return [
                response_to(msg, 100, "Trying"),
                response_to(with_tag, 180, "Ringing"),
                response_to(with_tag, 200, "OK"),
            ], []
        if call is not None and first.startswith(b"ACK ") and call["state"] == b"answered":
            call["state"] = b"reinvite"
            return [], [self._request(call, b"INVITE", 100)]
        if (
            call is not None
            and first.startswith(b"SIP/2.0 200")
            and call["state"] == b"reinvite"
            and h.get(b"cseq") == b"100 INVITE"
        ):
            call["state"] = b"bye"
            return [self._request(call, b"ACK", 100)], [self._request(call, b"BYE", 101)]
        if (
            call is not None
            and first.startswith(b"SIP/2.0 200")
            and call["state"] == b"bye"
            and h.get(b"cseq") == b"101 BYE"
        ):
            call["state"] = b"done"
            self.completed += 1
            return [], []
        self.unexpected.append(first + b" " + call_id)
        return [], []

    def stop(self) -> None:
        def _stop() -> None:
            self.server.close()
            self.loop.call_soon(self.loop.stop)

        self.loop.call_soon_threadsafe(_stop)
        self.thread.join(10)


@needs_sipp
@pytest.mark.parametrize(("clients", "calls"), [(2, 40), (8, 15)], ids=["2-clients", "8-clients"])
def test_peer_requests_reach_the_dialogs_connection(
    relay_factory: Factory, pki: Pki, tmp_path: Path, record: Record, clients: int, calls: int
) -> None:
    """The peer sends a re-INVITE and then a BYE in every call the SIPp clients placed: each
    reaches the client of its dialog (no local_target: nothing falls back)."""
    cert, key = peer_files(pki)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    peer = EndingPeer(ctx)
    try:
        relay = relay_factory(trunk_config(pki, peer.port))
        before = Metrics.scrape(relay)
        scenario = tmp_path / "peer-ends.xml"
        scenario.write_text(PEER_ENDS_SCENARIO)
        results = run_sipp(tmp_path, relay.port(0), clients, calls, scenario)
    finally:
        peer.stop()
    assert_all_calls_completed(results, calls)
    total = clients * calls
    assert (peer.completed, peer.unexpected) == (total, [])
    after = Metrics.scrape(relay)
    # re-INVITE, its ACK and the BYE of every call, by dialog; 100/180/200 and the 200s to
    # the re-INVITE and BYE (sent by the clients) need no routing
    by_dialog = after.delta(before, "tlstrace_trunk_routed_total", by="dialog")
    assert by_dialog == 3 * total
    assert after.delta(before, "tlstrace_trunk_routed_total", by="latest") == 0
    assert after.delta(before, "tlstrace_messages_dropped_total") == 0
    tables_emptied_by_closes(relay)
    record(
        clients=clients,
        calls_each=calls,
        completed=peer.completed,
        out_of_call=sum(r.out_of_call for r in results),
        routed_by_dialog=by_dialog,
    )


# -- local_target: the local SIP server gets what belongs to no local connection -----------


class LocalConn:
    """A local SIP server's connection to the tcp: listener (plain TCP)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.framer = SipFramer(max_msg_size=1 << 20, pingpong=False, max_chunks=None)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def received(self, wait: float = 0.5) -> list[bytes]:
        """Every message that arrives within `wait` seconds of quiet."""
        out: list[bytes] = []
        self.sock.settimeout(wait)
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return out
            if not data:
                return out
            out += [e.data for e in self.framer.feed(data) if isinstance(e, Message)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tls_peer(pki: Pki) -> Iterator[SipBackend]:
    cert, key = peer_files(pki)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with SipBackend(ssl_context=ctx) as p:
        yield p


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@needs_kamailio
def test_requests_without_a_connection_go_to_local_target(
    relay_factory: Factory, pki: Pki, tls_peer: SipBackend, tmp_path: Path, record: Record
) -> None:
    """With local connections attached (none of which knows the request), the peer's
    out-of-dialog requests, and in-dialog ones of dialogs tlstrace does not know, go to
    local_target: the real Kamailio, over a connection tlstrace opens (and reuses); its answers
    go back to the peer."""
    kam = KamailioSip(tmp_path / "kamailio")
    try:
        relay = relay_factory(
            trunk_config(pki, tls_peer.port, local_target=f"tcp:127.0.0.1:{kam.port}")
        )
        before = Metrics.scrape(relay)
        a, b = LocalConn(relay.port()), LocalConn(relay.port())
        for i, conn in enumerate((a, b)):
            conn.send(request("OPTIONS", f"mine{i}@t"))
        tls_peer.wait_messages(2)
        assert len(a.received()) == 1 and len(b.received()) == 1  # their own answers
        tls_peer.send(0, request("OPTIONS", "from-peer-1@t", uri="sip:ping@127.0.0.1"))
        tls_peer.send(
            0,
            request("BYE", "unknown-dialog@t", 2).replace(
                b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=never-seen"
            ),
        )
        tls_peer.send(0, request("OPTIONS", "from-peer-2@t", uri="sip:ping@127.0.0.1"))
        wait_for(lambda: len(tls_peer.conns[0].messages) >= 5)
        answers = tls_peer.conns[0].messages[2:]
        assert [m.split(b"\r\n")[0] for m in answers] == [
            b"SIP/2.0 200 Kamailio OK",
            b"SIP/2.0 405 Method Not Allowed",
            b"SIP/2.0 200 Kamailio OK",
        ]
        assert a.received() == [] and b.received() == []
        # one connection from tlstrace to Kamailio carried all three
        log = kam.wait_log("ci=from-peer-2@t")
        sources = {
            line.split(" from ")[1].split(" ")[0]
            for line in log.splitlines()
            if "KAM " in line and " from " in line
        }
        assert len(sources) == 1, sources
        after = Metrics.scrape(relay)
        assert after.delta(before, "tlstrace_trunk_routed_total", by="local_target") == 3
        assert (
            after.get(
                "tlstrace_upstream_up", upstream=f"tcp:127.0.0.1:{kam.port}", role="local_target"
            )
            == 1
        )
        a.close()
        b.close()
    finally:
        kam.stop()
    record(peer_requests=3, to_local_target=3, to_other_connections=0)


def test_a_response_whose_sender_left_is_dropped_and_counted(
    relay_factory: Factory, pki: Pki, tls_peer: SipBackend, record: Record
) -> None:
    """A local connection sends requests and closes before the answers come: with
    local_target set, the answers go to no other connection; they are dropped, counted by
    reason, and logged once per 10 s."""
    target = SipBackend()
    try:
        tls_peer.answer = False
        relay = relay_factory(
            trunk_config(pki, tls_peer.port, local_target=f"tcp:127.0.0.1:{target.port}")
        )
        before = Metrics.scrape(relay)
        stay, leave = LocalConn(relay.port()), LocalConn(relay.port())
        stay.send(request("OPTIONS", "stay@t"))
        n = 5
        sent = [request("OPTIONS", f"leave{i}@t") for i in range(n)]
        leave.send(b"".join(sent))
        tls_peer.wait_messages(n + 1)
        leave.close()
        time.sleep(0.5)  # the relay sees the close before the answers come
        for req in sent:
            tls_peer.send(0, response_to(req))
        wait_for(
            lambda: (
                Metrics.scrape(relay).delta(
                    before, "tlstrace_messages_dropped_total", reason="unmatched_response"
                )
                == n
            )
        )
        assert stay.received() == []
        assert target.conns == []  # a response never goes to local_target
        log = relay.log
        assert log.count("dropped a message (unmatched_response)") == 1, log
        assert "'SIP/2.0 200 OK'" in log
        stay.close()
    finally:
        target.stop()
    record(responses=n, dropped=n, log_lines=1)


def test_without_local_target_cancel_follows_its_invite(
    relay_factory: Factory, pki: Pki, tls_peer: SipBackend
) -> None:
    """Without local_target a request from the peer that matches nothing goes to the local
    connection that sent last (as before); its CANCEL, retransmission and non-2xx ACK follow
    it there even when another connection sent since."""
    relay = relay_factory(trunk_config(pki, tls_peer.port))
    a, b = LocalConn(relay.port()), LocalConn(relay.port())
    a.send(request("OPTIONS", "a1@t"))
    tls_peer.wait_messages(1)
    assert len(a.received()) == 1
    invite = request("INVITE", "incoming@t")
    tls_peer.send(0, invite)
    assert a.received() == [invite]
    b.send(request("OPTIONS", "b1@t"))  # b is the most recent sender now
    tls_peer.wait_messages(2)
    assert len(b.received()) == 1
    cancel = request("CANCEL", "incoming@t")  # same branch as its INVITE
    tls_peer.send(0, invite)  # a retransmission
    tls_peer.send(0, cancel)
    assert a.received() == [invite, cancel]
    assert b.received() == []
    # an unrelated new request from the peer goes to the most recent sender, as before
    other = request("OPTIONS", "other@t")
    tls_peer.send(0, other)
    assert b.received() == [other]
    a.close()
    b.close()


def test_local_target_down_then_up(
    relay_factory: Factory, pki: Pki, tls_peer: SipBackend, record: Record
) -> None:
    """While local_target refuses connections, the peer's requests for it are dropped,
    counted and logged once; once it listens, the next request gets through (no restart)."""
    port = free_port()
    relay = relay_factory(trunk_config(pki, tls_peer.port, local_target=f"tcp:127.0.0.1:{port}"))
    before = Metrics.scrape(relay)
    local = LocalConn(relay.port())
    local.send(request("OPTIONS", "hello@t"))
    tls_peer.wait_messages(1)
    n = 4
    for i in range(n):
        tls_peer.send(0, request("OPTIONS", f"lost{i}@t"))
    wait_for(
        lambda: (
            Metrics.scrape(relay).delta(
                before, "tlstrace_messages_dropped_total", reason="local_target_unreachable"
            )
            == n
        )
    )
    log = relay.wait_log(f"local_target tcp:127.0.0.1:{port} unreachable")
    assert log.count("dropped a message (local_target_unreachable)") == 1
    assert Metrics.scrape(relay).get("tlstrace_upstream_up", role="local_target") == 0
    got = local.received()  # its own answer only, none of the requests meant for the target
    assert [m.split(b"\r\n")[0] for m in got] == [b"SIP/2.0 200 OK"]
    assert b"Call-ID: hello@t" in got[0]
    with SipBackend(port=port) as target:
        time.sleep(1.1)  # past the one-second pause after a failed attempt
        tls_peer.send(0, request("OPTIONS", "found@t"))
        assert target.wait_messages(1)[0].startswith(b"OPTIONS ")
        wait_for(lambda: len(tls_peer.conns[0].messages) >= 2)  # the target's 200 OK
        assert tls_peer.conns[0].messages[1].startswith(b"SIP/2.0 200 OK")
        assert Metrics.scrape(relay).get("tlstrace_upstream_up", role="local_target") == 1
    local.close()
    record(requests_while_down=n, dropped=n, log_lines=1, after_recovery="delivered")
