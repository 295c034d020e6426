"""sngrep's HEP listener keeps what carries the right auth key and refuses the rest; what it
keeps it rebuilds with our addresses, ports, timestamp and payload."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from hep.codec import PacketTemplate
from hep.destination import HepDestination
from hep.sender import HepSender
from tests.support.sngrep import SngrepHep

pytestmark = pytest.mark.skipif(
    shutil.which("sngrep") is None, reason="sngrep is not installed (scripts/install-test-deps.sh)"
)

KEY = b"s3cret"


def message(call_id: str) -> bytes:
    return (
        f"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:alice@example.com>;tag=a-{call_id}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 MESSAGE\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def template(auth_key: bytes | None, v6: bool = False) -> PacketTemplate:
    return PacketTemplate(
        src_ip="2001:db8::1" if v6 else "10.0.0.1",
        dst_ip="2001:db8::2" if v6 else "10.0.0.2",
        src_port=5061,
        dst_port=5062,
        ip_proto=17,
        capture_id=3,
        auth_key=auth_key,
        node_name=b"tlstrace",
    )


async def send(port: int, packets: list[bytes]) -> None:
    sender = HepSender(HepDestination("sngrep", "127.0.0.1", port, "udp"))
    await sender.start()
    assert await sender.wait_connected(5)
    for p in packets:
        assert sender.send(p)
        await asyncio.sleep(0.001)
    assert (sender.stats.sent, sender.stats.dropped) == (len(packets), 0)
    await sender.aclose()


def run_sngrep(
    root: Path, auth_key: str | None
) -> dict[str, tuple[int, int, str, int, str, int, bytes]]:
    packets = [
        template(KEY).encode(1700000000, 123456, message("right-key@x")),
        template(b"wrong").encode(1700000001, 1, message("wrong-key@x")),
        template(None).encode(1700000002, 2, message("no-key@x")),
        template(KEY, v6=True).encode(1700000003, 999999, message("right-key-v6@x")),
    ]
    # later packets, so that the ones checked above are surely processed before the stop
    packets += [template(KEY).encode(1700000010, i, message(f"filler-{i}@x")) for i in range(5)]
    with SngrepHep(root, auth_key=auth_key) as sng:
        asyncio.run(send(sng.port, packets))
        sng.drain()
    kept = {}
    for f in sng.frames():
        call_id = next(
            line[9:].decode() for line in f.payload.split(b"\r\n") if line.startswith(b"Call-ID: ")
        )
        kept[call_id] = (f.ts_sec, f.ts_usec, f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.payload)
    return kept


def test_sngrep_enforces_the_auth_key(tmp_path: Path) -> None:
    kept = run_sngrep(tmp_path, KEY.decode())
    assert kept["right-key@x"] == (
        1700000000,
        123456,
        "10.0.0.1",
        5061,
        "10.0.0.2",
        5062,
        message("right-key@x"),
    )
    assert "wrong-key@x" not in kept
    assert "no-key@x" not in kept
    # sngrep keeps IPv6 HEP but writes its pcap as IPv4 with 0.0.0.0 addresses
    assert kept["right-key-v6@x"] == (
        1700000003,
        999999,
        "0.0.0.0",
        5061,
        "0.0.0.0",
        5062,
        message("right-key-v6@x"),
    )


def test_sngrep_without_a_key_keeps_everything(tmp_path: Path) -> None:
    kept = run_sngrep(tmp_path, None)
    assert {"right-key@x", "wrong-key@x", "no-key@x"} <= set(kept)
    assert kept["wrong-key@x"][:2] == (1700000001, 1)
