"""Kamailio `sipcapture` (an independent C receiver) stores what `hep/` sends over UDP, TCP and
TLS, to 127.0.0.1 and ::1, with IPv4 and IPv6 inside; every stored field is compared."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hep.codec import HepPacket, encode
from hep.destination import HepDestination
from hep.sender import HepSender
from tests.support.kamailio_capture import KamailioCapture

pytestmark = pytest.mark.skipif(
    shutil.which("kamailio") is None,
    reason="kamailio is not installed (scripts/install-test-deps.sh)",
)

TS = 1_700_000_000


def invite(call_id: str) -> bytes:
    return (
        f"INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK-{call_id}\r\n"
        f'From: "Alice" <sip:alice@example.com>;tag=from-{call_id}\r\n'
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 7 INVITE\r\n"
        f"Contact: <sip:alice@10.0.0.1:5061;transport=tls>\r\n"
        f"User-Agent: tlstrace-test\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def ok_reply(call_id: str) -> bytes:
    return (
        f"SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK-{call_id}\r\n"
        f'From: "Alice" <sip:alice@example.com>;tag=from-{call_id}\r\n'
        f"To: <sip:bob@example.com>;tag=to-{call_id}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 7 INVITE\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@dataclass(frozen=True)
class Case:
    transport: str
    collector: str  # where Kamailio listens
    inner: int  # IP version of the addresses carried in HEP

    @property
    def tag(self) -> str:
        v = "v6" if ":" in self.collector else "v4"
        return f"{self.transport}-{v}-in{self.inner}"


CASES = [Case(t, c, i) for t in ("udp", "tcp", "tls") for c in ("127.0.0.1", "::1") for i in (4, 6)]


def packets_for(case: Case, n: int) -> list[HepPacket]:
    src, dst = ("10.0.0.1", "10.0.0.2") if case.inner == 4 else ("2001:db8::1", "2001:db8::2")
    out = []
    for k in range(3):
        call_id = f"{case.tag}-{k}@tlstrace.test"
        payload = ok_reply(call_id) if k == 2 else invite(call_id)
        out.append(
            HepPacket(
                src_ip=src if k != 2 else dst,
                dst_ip=dst if k != 2 else src,
                src_port=5061 if k != 2 else 5060,
                dst_port=5060 if k != 2 else 5061,
                ts_sec=TS + n,
                ts_usec=100_000 * k + n,
                ip_proto=6 if case.inner == 4 else 17,
                proto_type=1,
                capture_id=1000 + n,
                correlation_id=f"corr-{case.tag}".encode() if k == 1 else None,
                auth_key=b"ignored-by-kamailio",
                node_name=b"tlstrace-node",
                payload=payload,
            )
        )
    return out


def log_packets() -> list[HepPacket]:
    return [
        HepPacket(
            src_ip=src,
            dst_ip=dst,
            src_port=5061,
            dst_port=5060,
            ts_sec=TS + 99,
            ts_usec=654321,
            ip_proto=6,
            proto_type=100,
            capture_id=4242,
            correlation_id=f"log-{i}@tlstrace.test".encode(),
            payload=f'{{"event":"tls-closed","n":{i},"text":"é"}}'.encode(),
        )
        for i, (src, dst) in enumerate([("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")])
    ]


@pytest.fixture(scope="module")
def kam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KamailioCapture]:
    with KamailioCapture(tmp_path_factory.mktemp("kamailio")) as k:
        yield k


def port_of(kam: KamailioCapture, transport: str) -> int:
    return {"udp": kam.udp_port, "tcp": kam.tcp_port, "tls": kam.tls_port}[transport]


async def send_all(kam: KamailioCapture, batches: list[tuple[HepDestination, list[bytes]]]) -> None:
    senders = []
    for dest, datas in batches:
        s = HepSender(dest, ca_file=kam.ca_file, backoff_initial=0.05, backoff_max=0.2)
        await s.start()
        assert await s.wait_connected(10), s.stats
        for d in datas:
            assert s.send(d), s.stats
        senders.append(s)
    deadline = time.monotonic() + 10
    while any(s.stats.queue_depth or s.stats.buffered_bytes for s in senders):
        assert time.monotonic() < deadline, [s.stats for s in senders]
        await asyncio.sleep(0.01)
    for s in senders:
        st = s.stats
        assert (st.dropped, st.send_errors, st.sent) == (0, 0, len(batches[senders.index(s)][1]))
        await s.aclose(timeout=2)


def expected_row(p: HepPacket, case: Case) -> dict[str, Any]:
    call_id = next(
        line.split(b": ", 1)[1].decode()
        for line in p.payload.split(b"\r\n")
        if line.startswith(b"Call-ID: ")
    )
    return {
        "micro_ts": p.ts_sec * 1_000_000 + p.ts_usec,
        "callid": call_id,
        "source_ip": p.src_ip,
        "source_port": p.src_port,
        "destination_ip": p.dst_ip,
        "destination_port": p.dst_port,
        "proto": {17: 1, 6: 2}[p.ip_proto],  # Kamailio's enum: 1 UDP, 2 TCP
        "family": p.family,
        "type": 2 if p.payload.startswith(b"SIP/2.0 ") else 1,
        "node": f"kam:{p.capture_id}",
        "correlation_id": (p.correlation_id or b"").decode() or call_id,
        "msg": p.payload,
        "instance": (
            "stream" if case.transport != "udp" else "udp6" if ":" in case.collector else "udp4"
        ),
    }


def test_kamailio_stores_every_field(kam: KamailioCapture) -> None:
    sent: dict[str, tuple[HepPacket, Case]] = {}
    batches = []
    for n, case in enumerate(CASES):
        ps = packets_for(case, n)
        dest = HepDestination(
            case.tag, case.collector, port_of(kam, case.transport), case.transport
        )  # type: ignore[arg-type]
        batches.append((dest, [encode(p) for p in ps]))
        for p in ps:
            sent[expected_row(p, case)["callid"]] = (p, case)
    logs = log_packets()
    batches.append(
        (HepDestination("logs", "127.0.0.1", kam.udp_port, "udp"), [encode(p) for p in logs])
    )
    asyncio.run(send_all(kam, batches))

    rows = kam.wait_rows("sip_capture", len(sent))
    assert len(rows) == len(sent), kam.logs()
    for row in rows:
        p, case = sent[row["callid"]]
        want = expected_row(p, case)
        assert {k: row[k] for k in want} == want
        is_reply = want["type"] == 2
        text = {k: row[k] or "" for k in row if k not in want}  # NULL and "" both mean unset
        assert text["method"] == ("200" if is_reply else "INVITE")
        assert text["reply_reason"] == ("OK" if is_reply else "")
        assert text["ruri"] == ("" if is_reply else "sip:bob@example.com")
        assert text["ruri_user"] == ("" if is_reply else "bob")
        assert (text["from_user"], text["from_tag"]) == ("alice", f"from-{row['callid']}")
        assert text["to_user"] == "bob"
        assert text["to_tag"] == (f"to-{row['callid']}" if is_reply else "")
        assert text["cseq"] == "7 INVITE"
        assert text["via_1_branch"] == f"z9hG4bK-{row['callid']}"
        assert text["user_agent"] == ("" if is_reply else "tlstrace-test")

    got_logs = kam.wait_rows("logs_capture", 2)
    assert len(got_logs) == 2
    for row, p in zip(got_logs, logs, strict=True):
        assert row["micro_ts"] == p.ts_sec * 1_000_000 + p.ts_usec
        assert (row["source_ip"], row["source_port"]) == (p.src_ip, p.src_port)
        assert (row["destination_ip"], row["destination_port"]) == (p.dst_ip, p.dst_port)
        assert (row["proto"], row["family"], row["type"]) == (2, p.family, 5)  # 5 = LOG
        assert row["node"] == "kam:4242"
        assert row["correlation_id"] == (p.correlation_id or b"").decode()
        assert row["msg"] == p.payload


def test_harness_stops_everything(tmp_path: Path) -> None:
    k = KamailioCapture(tmp_path / "k", transports=("udp",), ipv6=False)
    k.start()
    procs = [i.proc for i in k._instances]
    k.stop()
    k.stop()  # idempotent
    assert all(p is not None and p.poll() is not None for p in procs)


def test_mark_and_hep_id(kam: KamailioCapture) -> None:
    mark = kam.mark()
    hep_id = kam.hep_id("tcp", "::1")
    assert hep_id == f"[kamailio][::1]:{kam.tcp_port};transport=tcp"
    p = packets_for(Case("tcp", "::1", 4), 77)[0]

    async def send() -> None:
        s = HepSender(hep_id)
        await s.start()
        s.send(encode(p))
        await s.aclose(timeout=5)
        assert s.stats.sent == 1

    asyncio.run(send())
    rows = kam.wait_rows("sip_capture", 1, since=mark)
    assert [r["micro_ts"] for r in rows] == [p.ts_sec * 1_000_000 + p.ts_usec]
    assert kam.rows("sip_capture", "callid = ?", (rows[0]["callid"],))[0]["msg"] == p.payload
