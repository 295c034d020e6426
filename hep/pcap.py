"""Write the payloads carried by HEP packets to a pcap file (scapy), for Wireshark or sngrep.

Each packet becomes one Ethernet/IPv4-or-IPv6/UDP-or-TCP frame with the HEP addresses, ports
and timestamp (to the microsecond). IP protocol 6 (TCP) and 22 (Kamailio's "TLS") become TCP
segments with a running sequence number per flow (flags PSH+ACK, no handshake); every other
protocol becomes UDP. The MAC addresses are fixed placeholders.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from hep.codec import AF_INET, HepPacket

SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"
_TCP_PROTOS = frozenset({6, 22})
_DLT_EN10MB = 1


class PcapWriter:
    """Appends HEP payloads to a new pcap file; flushed after every packet."""

    def __init__(self, path: Path) -> None:
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw
        from scapy.utils import PcapWriter as ScapyWriter

        self._layers: tuple[Any, ...] = (Ether, IP, IPv6, TCP, UDP, Raw)
        self.path = path
        self.count = 0
        self._seq: dict[tuple[str, int, str, int], int] = {}
        self._w: Any = ScapyWriter(str(path), linktype=_DLT_EN10MB, sync=True, snaplen=65535)
        self._w.write_header(None)

    def frame(self, p: HepPacket) -> Any:
        """The scapy packet for `p`."""
        Ether, IP, IPv6, TCP, UDP, Raw = self._layers
        ip: Any = (
            IP(src=p.src_ip, dst=p.dst_ip)
            if p.family == AF_INET
            else IPv6(src=p.src_ip, dst=p.dst_ip)
        )
        l4: Any
        if p.ip_proto in _TCP_PROTOS:
            flow = (p.src_ip, p.src_port, p.dst_ip, p.dst_port)
            seq = self._seq.get(flow, 1)
            self._seq[flow] = (seq + len(p.payload)) & 0xFFFFFFFF
            l4 = TCP(sport=p.src_port, dport=p.dst_port, seq=seq, flags="PA", window=65535)
        else:
            l4 = UDP(sport=p.src_port, dport=p.dst_port)
        return Ether(src=SRC_MAC, dst=DST_MAC) / ip / l4 / Raw(p.payload)

    def write(self, p: HepPacket) -> None:
        self._w.write_packet(self.frame(p), sec=p.ts_sec, usec=p.ts_usec)
        self.count += 1

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
