"""The PROXY protocol v2 header (sans-IO), checked against Wireshark's PROXY dissector."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tlstrace.relay.proxy_protocol import SIGNATURE, header, parse

CASES = [
    (("192.0.2.7", 40001), ("198.51.100.1", 5061), "ipv4"),
    (("2001:db8::7", 40002), ("2001:db8::1", 5061), "ipv6"),
    (("192.0.2.9", 5), ("2001:db8::1", 5061), "ipv6"),  # mixed: both as IPv6
]


@pytest.mark.parametrize(("src", "dst", "family"), CASES)
def test_layout(src: tuple[str, int], dst: tuple[str, int], family: str) -> None:
    h = header(src, dst)
    assert h.startswith(SIGNATURE) and h[12] == 0x21
    assert h[13] == (0x11 if family == "ipv4" else 0x21)
    assert len(h) == 16 + (12 if family == "ipv4" else 36)
    parsed = parse(h + b"rest")
    assert parsed is not None and parsed[2] == len(h)
    if family == "ipv4":
        assert parsed[:2] == (src, dst)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
@pytest.mark.parametrize(("src", "dst", "family"), CASES[:2])
def test_wireshark_decodes_it(
    tmp_path: Path, src: tuple[str, int], dst: tuple[str, int], family: str
) -> None:
    from scapy.all import IP, TCP, Ether, wrpcap

    payload = header(src, dst) + b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    pkt = (
        Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=33333, dport=5060, flags="PA", seq=1)
        / payload
    )
    pcap = tmp_path / "proxy.pcap"
    wrpcap(str(pcap), [pkt])
    fields = [
        "proxy.v2.version",
        f"proxy.src.{family}",
        "proxy.srcport",
        f"proxy.dst.{family}",
        "proxy.dstport",
    ]
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-o",
            "tcp.try_heuristic_first:TRUE",
            "-T",
            "fields",
            *[a for f in fields for a in ("-e", f)],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out.split("\t") == ["2", src[0], str(src[1]), dst[0], str(dst[1])]
