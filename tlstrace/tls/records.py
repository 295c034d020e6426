"""Where a TLS byte stream stands between records, sans-IO.

OpenSSL pulls the bytes of an incomplete record out of the memory BIO into its own buffer,
so the BIO cannot tell a record trickling in byte by byte (a slow-loris at the TLS layer)
from an idle connection. This tracker follows the 5-byte record headers instead."""

from __future__ import annotations


class RecordTracker:
    __slots__ = ("_head", "_left")

    def __init__(self) -> None:
        self._left = 0  # body bytes still to come of the current record
        self._head = b""  # the start of a record header split across reads

    @property
    def partial(self) -> bool:
        """True while the stream is inside a record (or its header)."""
        return bool(self._left or self._head)

    def feed(self, data: bytes) -> None:
        n = len(data)
        if not self._left and not self._head and n >= 5 and 5 + (data[3] << 8 | data[4]) == n:
            return  # the common case: exactly one whole record
        i = 0
        left, head = self._left, self._head
        while i < n:
            if left:
                step = min(left, n - i)
                left -= step
                i += step
                continue
            take = 5 - len(head)
            head += data[i : i + take]
            i += take
            if len(head) == 5:
                left = head[3] << 8 | head[4]
                head = b""
        self._left, self._head = left, head
