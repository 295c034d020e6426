"""Every relayed message leaves a trace (issue 15, part 3), read back by receivers nobody here
wrote: Kamailio's sipcapture into SQLite (over UDP and over TCP) and hep-js.

A message whose HEP packet would exceed `hep_max_packet` (65,507 bytes by default) is traced
truncated, marked `X-Tlstrace-Truncated: length=N;cut=body|headers` after its start line, with
a type-100 record about it; a Call-ID over 256 bytes goes into the correlation chunk as its
first 223 bytes, `~` and 32 hex digits of its SHA-256. Messages at, just under and just over
each limit go through the real relay while legitimate clients keep calling. The sizes are
worked out from what the receivers get for a small message, not from tlstrace's own encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import LegitTraffic, Metrics, wait_metric
from tests.support import hepjs
from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.kamailio_capture import KamailioCapture
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient

Legit = Callable[..., LegitTraffic]
Factory = Callable[..., RelayProcess]

#: the documented bounds (README, Tracing)
MAX_PACKET = 65507
CALL_ID_MAX = 256
MAX_MSG_SIZE = 65535  # the relay's default


def expected_short(call_id: bytes) -> bytes:
    """The documented short form of a long (ASCII) Call-ID."""
    if len(call_id) <= CALL_ID_MAX:
        return call_id
    return call_id[: CALL_ID_MAX - 33] + b"~" + hashlib.sha256(call_id).hexdigest()[:32].encode()


def build(
    call_id: str,
    *,
    body: bytes = b"",
    headers: tuple[str, ...] = (),
    method: str = "INVITE",
    branch: str = "z9hG4bK-ovs",
) -> bytes:
    lines = [
        f"{method} sip:bob@example.com SIP/2.0",
        f"Via: SIP/2.0/TLS 192.0.2.10:5061;branch={branch}",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=a-1",
        "To: <sip:bob@example.com>",
        *headers,
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sized(call_id: str, size: int, **kw: Any) -> bytes:
    """A message of exactly `size` bytes (the body pads it)."""
    base = len(build(call_id, **kw))
    for n in range(max(0, size - base - 8), size - base + 1):
        m = build(call_id, body=b"v" * n, **kw)
        if len(m) == size:
            return m
    raise AssertionError(f"cannot build {size} bytes")


@dataclass
class Case:
    label: str
    message: bytes
    truncated: str | None  # None, "body" or "headers"

    @property
    def call_id(self) -> bytes:
        return re.search(rb"\r\nCall-ID: ([^\r]*)", self.message).group(1)  # type: ignore[union-attr]

    @property
    def cid(self) -> bytes:
        return expected_short(self.call_id)


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KamailioCapture]:
    with KamailioCapture(
        tmp_path_factory.mktemp("kam-oversize"), transports=("udp", "tcp"), ipv6=False
    ) as k:
        yield k


def rows_of(
    kam: KamailioCapture, instance: str, cid: bytes, count: int, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """The sip_capture rows of one Kamailio instance under correlation id `cid`, once there are
    `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [
            r
            for r in kam.rows("sip_capture", "correlation_id = ?", (cid.decode(),))
            if r["instance"] == instance
        ]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def without_mark(msg: bytes) -> tuple[bytes, str | None, int | None]:
    """(the message without the truncation mark line, cut, original length)."""
    m = re.search(rb"\r\nX-Tlstrace-Truncated: length=(\d+);cut=(body|headers)\r\n", msg)
    if m is None:
        return msg, None, None
    return msg[: m.start()] + msg[m.end() - 2 :], m.group(2).decode(), int(m.group(1))


def test_every_relayed_message_leaves_a_trace(
    relay_factory: Factory, backend: SipBackend, kam: KamailioCapture, legit: Legit, record: Record
) -> None:
    with HepSink() as sink:
        relay = relay_factory(
            {
                "trace_on": True,
                "tls_max_msg_chunks": 16,
                "hep_id": [
                    kam.hep_id("udp", name="kamudp"),
                    kam.hep_id("tcp", name="kamtcp"),
                    sink.hep_id,
                ],
                "listener": [RelayProcess.tls_listener(backend.port)],
            }
        )
        # what a packet costs besides the payload and the correlation id, as received
        with TlsClient(relay.port()) as probe:
            probe.send(build("probe@ovs", method="OPTIONS"))
            probe.recv_messages(1)
        got = sink.wait(2, 1)
        p = next(p for p in got if p.payload.startswith(b"OPTIONS"))
        raw = next(d for d in sink.datagrams if p.payload in d)
        overhead = len(raw) - len(p.payload) - len(b"probe@ovs")
        assert (p.correlation_id, len(raw)) == (b"probe@ovs", int.from_bytes(raw[4:6], "big"))

        def fits(call_id: str) -> int:  # the largest message whose packet is MAX_PACKET
            return MAX_PACKET - overhead - len(expected_short(call_id.encode()))

        long_ids = [f"{i}-" + "c" * (33000 - 2) for i in range(6)]
        pad = tuple(f"X-Pad-{i:03d}: " + "p" * 84 for i in range(673))  # 65 kB of headers
        cases = [
            Case("under", sized("under@ovs", fits("under@ovs") - 1), None),
            Case("at", sized("at@ovs", fits("at@ovs")), None),
            Case("over", sized("over@ovs", fits("over@ovs") + 1), "body"),
            Case("max_msg_size", sized("max@ovs", MAX_MSG_SIZE), "body"),
            Case("max_msg_size-1", sized("max1@ovs", MAX_MSG_SIZE - 1), "body"),
            *[Case(f"65500-{i}", sized(f"big{i}@ovs", 65500), "body") for i in range(5)],
            Case("headers", sized("hdr@ovs", MAX_MSG_SIZE - 5, headers=pad), "headers"),
            Case("cid-at", build("a" * CALL_ID_MAX), None),
            Case("cid-under", build("u" * (CALL_ID_MAX - 1)), None),
            Case("cid-over", build("o" * (CALL_ID_MAX + 1)), None),
            *[
                Case(f"33k-cid-{i}", build(cid, body=b"v" * 100), None)
                for i, cid in enumerate(long_ids[:5])
            ],
            # a long Call-ID and a message just over the limit with it
            Case("33k-cid-over", sized(long_ids[5], fits(long_ids[5]) + 1), "body"),
        ]
        for c in cases:
            assert len(c.message) <= MAX_MSG_SIZE, c.label
        headers_case = next(c for c in cases if c.label == "headers")
        assert headers_case.message.index(b"\r\n\r\n") > fits("hdr@ovs")
        over = next(c for c in cases if c.label == "over")
        before = Metrics.scrape(relay)
        # paced so that Kamailio's one UDP worker, writing SQLite, keeps up with everything
        traffic = legit(relay.port(), pace=0.1)
        with TlsClient(relay.port()) as client:
            cport = client.local_port
            for c in cases:
                client.send(c.message)
                answer = client.recv_messages(1)[0]
                assert answer.startswith(b"SIP/2.0 200 OK") and c.call_id in answer, c.label
                # one at a time: a Kamailio worker writing SQLite is slower than loopback UDP
                for instance in ("udp4", "stream"):
                    assert len(rows_of(kam, instance, c.cid, 2)) >= 2, (instance, c.label)
            # one byte over max_msg_size is not relayed (the connection is closed): no trace
            with TlsClient(relay.port()) as refused:
                # the relay closes as soon as the Content-Length tells the size, which may be
                # while the rest is still being sent
                try:
                    refused.send(sized("refused@ovs", MAX_MSG_SIZE + 1))
                except (OSError, ssl.SSLError):
                    pass
                else:
                    assert refused.wait_closed()
            # the same long Call-ID again, on another connection: the same short id
            with TlsClient(relay.port()) as again:
                again.send(build(long_ids[1], branch="z9hG4bK-again"))
                again.recv_messages(1)
            client.close_notify()
        traffic.check(backend)
        truncated = [c for c in cases if c.truncated]

        # Kamailio over UDP and over TCP: every request and its answer, under its correlation id
        for instance in ("udp4", "stream"):
            for c in cases:
                rows = rows_of(kam, instance, c.cid, 2)
                req = [r for r in rows if r["type"] == 1 and r["source_port"] == cport]
                resp = [r for r in rows if r["type"] == 2 and r["destination_port"] == cport]
                assert len(req) == 1 and len(resp) >= 1, (instance, c.label, len(rows))
                msg = req[0]["msg"]
                assert req[0]["method"] == "INVITE", (instance, c.label)
                if c.truncated is None:
                    assert msg == c.message, (instance, c.label)
                else:
                    plain, cut, length = without_mark(msg)
                    assert (cut, length) == (c.truncated, len(c.message)), (instance, c.label)
                    assert msg.startswith(c.message.split(b"\r\n", 1)[0] + b"\r\nX-Tlstrace-")
                    if cut == "body":
                        assert c.message.startswith(plain), (instance, c.label)
                    else:  # whole header lines left out, the dialog's kept
                        lines = plain.split(b"\r\n")
                        assert set(lines) <= set(c.message.split(b"\r\n"))
                        for h in (b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:"):
                            assert any(x.startswith(h) for x in lines), h
                        assert req[0]["callid"] == c.call_id.decode()
                    assert len(msg) + overhead + len(c.cid) <= MAX_PACKET
                    if c.label == "over":  # the room is filled exactly
                        assert len(msg) + overhead + len(c.cid) == MAX_PACKET
                if len(c.call_id) <= 1000:
                    assert req[0]["callid"] == c.call_id.decode(), (instance, c.label)
        # the same long Call-ID maps to the same short id on another connection
        again_rows = kam.wait_rows(
            "sip_capture", 1, where="via_1_branch = ?", params=("z9hG4bK-again",), timeout=20
        )
        assert {r["correlation_id"] for r in again_rows} == {
            expected_short(long_ids[1].encode()).decode()
        }
        assert kam.rows("sip_capture", "callid = ?", ("refused@ovs",)) == []
        assert not any(b"refused@ovs" in d for d in sink.datagrams)

        # type-100 records (Kamailio stores them over UDP): one per truncated message
        logs = kam.wait_rows(
            "logs_capture",
            1,
            where="CAST(msg AS TEXT) LIKE ?",
            params=('%"tls-trace-truncated"%',),
            timeout=20,
        )
        notes = [(r["correlation_id"], json.loads(r["msg"])) for r in logs]
        for c in truncated:
            mine = [
                n for cid, n in notes if cid == c.cid.decode() and n["length"] == len(c.message)
            ]
            assert len(mine) == 1, c.label
            n = mine[0]
            assert (n["message"], n["cut"], n["max_packet"], n["direction"]) == (
                "received",
                c.truncated,
                MAX_PACKET,
                "inbound",
            )
            assert n["remote"] == f"127.0.0.1:{cport}" and n["call_id"] == c.cid.decode()
            assert n["traced_length"] < len(c.message)
        # session records: the short id, and the real length of a long Call-ID
        sessions = {
            r["correlation_id"]: json.loads(r["msg"])
            for r in kam.wait_rows(
                "logs_capture", 1, where="CAST(msg AS TEXT) LIKE ?", params=('%"tls-session"%',)
            )
        }
        for c in cases:
            s = sessions[c.cid.decode()]
            assert s["call_id"] == c.cid.decode()
            assert s.get("call_id_length") == (len(c.call_id) if c.cid != c.call_id else None)

        # the packets themselves: none over the bound, each one decoded by hep-js
        sink.settle()
        mine = [d for d in list(sink.datagrams) if any(c.cid in d for c in cases)]
        assert mine and max(map(len, mine)) <= MAX_PACKET
        assert MAX_PACKET in map(len, mine)
        if hepjs.available():
            decoded = hepjs.hepjs_decode(mine)
            assert None not in decoded
            by_cid: dict[str, int] = {}
            for d in decoded:
                assert d is not None
                by_cid[d["rcinfo"]["correlation_id"]] = (
                    by_cid.get(d["rcinfo"]["correlation_id"], 0) + 1
                )
            for c in cases:  # request, answer, session record (and the truncation record)
                assert by_cid.get(c.cid.decode(), 0) >= 3, c.label

        # counted by reason, logged with the connection and its address
        after = wait_metric(
            relay, "tlstrace_trace_oversize_total", before.get("tlstrace_trace_oversize_total") + 1
        )
        delta = {
            r: after.delta(before, "tlstrace_trace_oversize_total", reason=r)
            for r in ("truncated_body", "truncated_headers", "long_call_id", "not_traced")
        }
        long_msgs = 2 * (len([c for c in cases if c.cid != c.call_id]) + 1)  # with the answers
        assert delta == {
            "truncated_body": len([c for c in truncated if c.truncated == "body"]),
            "truncated_headers": 1,
            "long_call_id": long_msgs,
            "not_traced": 0,
        }, delta
        line = re.search(
            rf"WARNING tlstrace\.trace: conn \d+ inbound 127\.0\.0\.1:{cport}: "
            rf"'INVITE' of {len(over.message)} bytes received: does "
            rf"not fit one HEP packet \(hep_max_packet {MAX_PACKET}\): traced "
            rf"truncated to \d+ bytes, body cut",
            relay.log,
        )
        assert line is not None, relay.log[-3000:]
        # messages that fit (at and under the limits) are not news
        for c in cases:
            if c.truncated is None and c.cid == c.call_id:
                assert f"'INVITE' of {len(c.message)} bytes" not in relay.log, c.label
        record(
            cases=len(cases),
            truncated=len(truncated),
            long_call_ids=long_msgs,
            packets=len(mine),
            largest=max(map(len, mine)),
            legit=traffic.sent,
            legit_errors=len(traffic.errors),
        )


def test_oversize_log_is_rate_limited(
    relay_factory: Factory, backend: SipBackend, legit: Legit, record: Record
) -> None:
    """A client padding every request gets each one traced and counted, not a log line each."""
    with HepSink() as sink:
        relay = relay_factory(
            {
                "trace_on": True,
                "tls_max_msg_chunks": 16,
                "hep_id": [sink.hep_id],
                "listener": [RelayProcess.tls_listener(backend.port)],
            }
        )
        traffic = legit(relay.port())
        n = 60
        started = time.monotonic()
        with TlsClient(relay.port()) as client:
            for i in range(n):
                client.send(sized(f"flood{i}@ovs", 65500))
                client.recv_messages(1)
            client.close_notify()
        elapsed = time.monotonic() - started
        traffic.check(backend)
        m = wait_metric(relay, "tlstrace_trace_oversize_total", n, reason="truncated_body")
        assert m.get("tlstrace_trace_oversize_total", reason="truncated_body") == n
        want = {f"flood{i}@ovs".encode() for i in range(n)}
        deadline = time.monotonic() + 20
        while True:  # every request traced, truncated
            got = {
                p.correlation_id
                for p in sink.packets(1)
                if b"X-Tlstrace-Truncated: length=65500;cut=body" in p.payload
            }
            if got >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got == want
        lines = [x for x in relay.log.splitlines() if "does not fit one HEP packet" in x]
        windows = int(elapsed // 10) + 2
        assert 1 <= len(lines) <= 5 * windows < n, len(lines)
        record(oversize=n, log_lines=len(lines), legit=traffic.sent)
