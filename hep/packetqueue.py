"""A sender's queue of encoded HEP packets, sans-IO: bounded by packets and bytes, taken one
datagram at a time (UDP) or as whole packets joined into one write (TCP/TLS)."""

from __future__ import annotations

import collections

__all__ = ["PacketQueue"]


class PacketQueue:
    """Encoded packets waiting to be sent, oldest first, at most `max_packets` packets and
    `max_bytes` bytes. `add` refuses (False) what would go over either bound; the caller
    counts it as dropped."""

    __slots__ = ("_packets", "max_bytes", "max_packets", "size")

    def __init__(self, max_packets: int, max_bytes: int) -> None:
        if max_packets < 1 or max_bytes < 1:
            raise ValueError("max_packets and max_bytes must be at least 1")
        self._packets: collections.deque[bytes] = collections.deque()
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        #: bytes queued
        self.size = 0

    def __len__(self) -> int:
        return len(self._packets)

    def __bool__(self) -> bool:
        return bool(self._packets)

    def add(self, packet: bytes) -> bool:
        """Queue one packet; False (nothing queued) when a bound would be exceeded."""
        size = self.size + len(packet)
        if size > self.max_bytes or len(self._packets) >= self.max_packets:
            return False
        self._packets.append(packet)
        self.size = size
        return True

    def first(self) -> bytes:
        """The oldest packet (the queue must not be empty)."""
        return self._packets[0]

    def pop(self) -> bytes:
        """Remove and return the oldest packet (the queue must not be empty)."""
        packet = self._packets.popleft()
        self.size -= len(packet)
        return packet

    def take(self, max_bytes: int) -> tuple[bytes, int]:
        """The oldest packets, whole, joined for one write: all of them when they fit in
        `max_bytes`, else as many as fit (at least one). Returns (bytes, packets); (b"", 0)
        when the queue is empty."""
        packets = self._packets
        if self.size <= max_bytes:
            data, n = b"".join(packets), len(packets)
            packets.clear()
            self.size = 0
            return data, n
        batch: list[bytes] = []
        size = 0
        while packets and (not batch or size + len(packets[0]) <= max_bytes):
            packet = packets.popleft()
            batch.append(packet)
            size += len(packet)
        self.size -= size
        return b"".join(batch), len(batch)

    def clear(self) -> int:
        """Empty the queue; returns how many packets it held."""
        n = len(self._packets)
        self._packets.clear()
        self.size = 0
        return n
