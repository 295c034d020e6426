"""`tlstrace hep-listen` as users run it: a subprocess that prints one JSON line per packet and
writes the payloads to a pcap that tshark and scapy read back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hep.codec import HepChunk, HepPacket, encode
from hep.destination import HepDestination
from hep.listen import Collector, packet_json, parse_listen_address, serve
from hep.sender import HepSender
from tests.support.net import free_port, udp_bound

TLSTRACE = Path(sys.executable).parent / "tlstrace"


def sip(call_id: str) -> bytes:
    return (
        f"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK"
        f"{call_id}\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


PACKETS = [
    HepPacket(
        src_ip="10.0.0.1",
        dst_ip="10.0.0.2",
        src_port=5061,
        dst_port=5060,
        ts_sec=1700000000,
        ts_usec=123456,
        ip_proto=6,
        proto_type=1,
        capture_id=2001,
        keep_alive=30,
        auth_key=b"k",
        correlation_id=b"corr-1",
        vlan=7,
        node_name=b"relay-1",
        payload=sip("listen-1@x"),
    ),
    HepPacket(
        src_ip="2001:db8::1",
        dst_ip="2001:db8::2",
        src_port=5062,
        dst_port=5063,
        ts_sec=1700000001,
        ts_usec=999999,
        ip_proto=17,
        proto_type=1,
        capture_id=1,
        payload=sip("listen-2@x"),
    ),
    HepPacket(
        src_ip="10.0.0.2",
        dst_ip="10.0.0.1",
        src_port=5060,
        dst_port=5061,
        ts_sec=1700000002,
        ts_usec=5,
        ip_proto=6,
        proto_type=100,
        capture_id=2001,
        correlation_id=b"listen-1@x",
        payload='{"event":"closed","é":1}'.encode(),
    ),
    HepPacket(
        src_ip="10.0.0.3",
        dst_ip="10.0.0.4",
        src_port=1,
        dst_port=2,
        ts_sec=1700000003,
        ts_usec=0,
        ip_proto=17,
        proto_type=4,
        unknown=(HepChunk(3, 0x65, b"\x01\x02"),),
        payload=b"\x80\xff\x00rtp",
    ),
]


class Listener:
    """`tlstrace hep-listen` in a subprocess; stdout lines go to a queue."""

    def __init__(self, address: str, pcap: Path | None = None) -> None:
        cmd = [str(TLSTRACE), "hep-listen", address]
        if pcap is not None:
            cmd += ["--pcap", str(pcap)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr = ""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.decode())

    def wait_ready(self, host: str, port: int, transport: str) -> None:
        deadline = time.monotonic() + 15
        while not bound(host, port, transport):
            assert self.proc.poll() is None, self.finish()
            assert time.monotonic() < deadline, "hep-listen did not bind"
            time.sleep(0.05)

    def json_lines(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
                out.append(json.loads(line))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} lines of {n}: {out}") from None
        return out

    def finish(self, sig: int = signal.SIGTERM) -> str:
        """Stop with `sig`; return stderr. The exit code is in self.proc.returncode."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._t.join(timeout=5)
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read().decode()
        return self.stderr


@contextlib.contextmanager
def listener(address: str, pcap: Path | None = None) -> Iterator[Listener]:
    lst = Listener(address, pcap)
    try:
        yield lst
    finally:
        lst.finish()


def bound(host: str, port: int, transport: str) -> bool:
    if transport == "tcp":
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    return udp_bound(host, port)


def test_udp_json_lines_and_pcap(tmp_path: Path) -> None:
    port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
    pcap = tmp_path / "out.pcap"
    with listener(f"udp:127.0.0.1:{port}", pcap) as lst:
        lst.wait_ready("127.0.0.1", port, "udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in PACKETS:
                s.sendto(encode(p), ("127.0.0.1", port))
            s.sendto(b"HEP3\x00\x09x", ("127.0.0.1", port))
            lines = lst.json_lines(len(PACKETS) + 1)
        stderr = lst.finish()
        assert lst.proc.returncode == 0, stderr
    assert "4 packets, 1 undecodable" in stderr
    for p, line in zip(PACKETS, lines, strict=False):
        assert line.pop("transport") == "udp"
        assert line.pop("peer").startswith("127.0.0.1:")
        assert line.pop("size") == len(encode(p))
        assert isinstance(line.pop("received"), float)
        assert line == packet_json(p)
    first, log, binary = lines[0], lines[2], lines[3]
    assert first["time"] == "2023-11-14T22:13:20.123456Z"
    assert (first["auth_key"], first["correlation_id"], first["node_name"]) == (
        "k",
        "corr-1",
        "relay-1",
    )
    assert (first["keep_alive"], first["vlan"], first["proto_name"]) == (30, 7, "SIP")
    assert first["payload"] == sip("listen-1@x").decode()
    assert (log["proto_name"], log["payload"]) == ("LOG", '{"event":"closed","é":1}')
    assert binary["payload"] == {"base64": base64.b64encode(b"\x80\xff\x00rtp").decode()}
    assert binary["unknown"] == [{"vendor": 3, "type": 0x65, "hex": "0102"}]
    error = lines[4]
    assert "total length field is 9 but 7" in error["error"]
    assert error["hex"] == "48455033000978"

    check_pcap(pcap, PACKETS)


def check_pcap(pcap: Path, packets: list[HepPacket]) -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import rdpcap

    frames = rdpcap(str(pcap))
    assert len(frames) == len(packets)
    for f, p in zip(frames, packets, strict=True):
        ip = f[IP] if p.family == 2 else f[IPv6]
        l4 = f[TCP] if p.ip_proto == 6 else f[UDP]
        assert (ip.src, ip.dst, l4.sport, l4.dport) == (p.src_ip, p.dst_ip, p.src_port, p.dst_port)
        assert bytes(l4.payload) == p.payload
        assert int(f.time) == p.ts_sec
        assert round((f.time - p.ts_sec) * 1_000_000) == p.ts_usec
    if shutil.which("tshark"):
        out = subprocess.run(
            [
                "tshark",
                "-r",
                str(pcap),
                "-T",
                "fields",
                "-E",
                "separator=|",
                "-e",
                "frame.time_epoch",
                "-e",
                "ip.src",
                "-e",
                "ipv6.src",
                "-e",
                "sip.Call-ID",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()
        assert out[0] == "1700000000.123456000|10.0.0.1||listen-1@x"
        assert out[1] == "1700000001.999999000||2001:db8::1|listen-2@x"


def test_tcp_on_ipv6_with_a_broken_connection(tmp_path: Path) -> None:
    port = free_port(socket.AF_INET6)
    with listener(f"tcp:[::1]:{port}") as lst:
        lst.wait_ready("::1", port, "tcp")
        with socket.create_connection(("::1", port)) as junk:
            junk.sendall(b"INVITE sip:x SIP/2.0\r\n\r\n")  # not HEP: error line, closed
            error = lst.json_lines(1)[0]
            assert "bad magic" in error["error"] and error["transport"] == "tcp"

        async def send() -> HepSender:
            s = HepSender(HepDestination("l", "::1", port, "tcp"))
            await s.start()
            for p in PACKETS:
                s.send(encode(p))
            await s.aclose(timeout=5)
            return s

        sender = asyncio.run(send())
        assert sender.stats.sent == len(PACKETS)
        lines = lst.json_lines(len(PACKETS))
        assert [line["payload"] for line in lines] == [packet_json(p)["payload"] for p in PACKETS]
        assert all(line["transport"] == "tcp" for line in lines)
        lst.finish(signal.SIGINT)
        assert lst.proc.returncode == 0, lst.stderr


def test_bad_address_and_busy_port() -> None:
    bad = subprocess.run(
        [str(TLSTRACE), "hep-listen", "sctp:1.2.3.4:9"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "udp:HOST:PORT" in bad.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        busy = subprocess.run(
            [str(TLSTRACE), "hep-listen", f"udp:127.0.0.1:{s.getsockname()[1]}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert busy.returncode == 1 and "cannot listen" in busy.stderr


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("udp:127.0.0.1:9060", ("udp", "127.0.0.1", 9060)),
        ("tcp:[::1]:0", ("tcp", "::1", 0)),
        ("udp:localhost:9", ("udp", "localhost", 9)),
        ("udp:::1:9060", None),
        ("udp:[::1]", None),
        ("udp:127.0.0.1", None),
        ("tls:127.0.0.1:9060", None),
        ("udp:127.0.0.1:70000", None),
    ],
)
def test_parse_listen_address(text: str, ok: tuple[str, str, int] | None) -> None:
    if ok is None:
        with pytest.raises(ValueError):
            parse_listen_address(text)
    else:
        a = parse_listen_address(text)
        assert (a.transport, a.host, a.port) == ok


def test_serve_in_process_on_both_transports() -> None:
    async def scenario() -> None:
        for address in ("udp:127.0.0.1:0", "tcp:127.0.0.1:0", "udp:[::1]:0"):
            col = Collector()
            async with await serve(address, col.on_packet, col.on_error) as server:
                assert server.address.port != 0
                s = HepSender(
                    HepDestination(
                        "x", server.address.host, server.address.port, server.address.transport
                    )
                )
                await s.start()
                for p in PACKETS:
                    s.send(encode(p))
                assert await col.wait(len(PACKETS)) == PACKETS
                await s.aclose()

    asyncio.run(scenario())
