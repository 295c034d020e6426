"""HEPv3 for tlstrace, usable on its own.

- `hep.codec`: the strict sans-IO codec (`HepPacket`, `encode`, `decode`, `HepDecodeError`,
  `PacketTemplate` for the hot path, `StreamDecoder` for TCP/TLS).
- `hep.destination`: OpenSIPS-style `hep_id`s, `[name]host[:port][;transport=..]`.
- `hep.sender`: non-blocking asyncio senders over UDP, TCP and TLS (`HepSender`,
  `HepSenderGroup`), with bounded queues, backoff and counters.
- `hep.listen`: a receiver printing JSON lines (`tlstrace hep-listen`) and `serve()`.
- `hep.pcap`: the carried payloads as a pcap file.

    template = PacketTemplate(src_ip="192.0.2.1", dst_ip="192.0.2.2", src_port=5061,
                              dst_port=5060, ip_proto=6, capture_id=1)
    sender = HepSender("[homer]10.0.0.5:9060;transport=udp")
    await sender.start()
    sender.send(template.encode(sec, usec, sip_bytes, call_id))   # never blocks or raises
"""

from hep.codec import (
    HepChunk,
    HepDecodeError,
    HepPacket,
    PacketTemplate,
    StreamDecoder,
    decode,
    encode,
)
from hep.destination import HepDestination, parse_hep_id

__all__ = [
    "HepChunk",
    "HepDecodeError",
    "HepDestination",
    "HepPacket",
    "PacketTemplate",
    "StreamDecoder",
    "decode",
    "encode",
    "parse_hep_id",
]
