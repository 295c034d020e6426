"""HEPv3 for tlstrace, usable on its own: a strict sans-IO codec (`hep.codec`), `hep_id`
destinations (`hep.destination`), non-blocking asyncio senders (`hep.sender`), and a listener
that prints what it receives (`hep.listen`, `tlstrace hep-listen`)."""

from hep.codec import (
    HepChunk,
    HepDecodeError,
    HepPacket,
    PacketTemplate,
    StreamDecoder,
    decode,
    encode,
)

__all__ = [
    "HepChunk",
    "HepDecodeError",
    "HepPacket",
    "PacketTemplate",
    "StreamDecoder",
    "decode",
    "encode",
]
