"""Following TLS record boundaries through a byte stream, sans-IO.

OpenSSL takes the bytes of an incomplete record out of its memory BIO, so the BIO cannot tell
a record trickling in byte by byte (a slow-loris at the TLS layer) from an idle connection;
SSLWantReadError cannot either, as a complete post-handshake record (a session ticket, a
KeyUpdate) raises it too. The 5-byte record headers can."""

from __future__ import annotations


def advance(left: int, head: bytes, data: bytes) -> tuple[int, bytes]:
    """Follow records through `data`, starting `left` bytes before the end of the current
    record's body with `head` the start of a header split across reads; return the same pair
    after `data` (0 and b"" exactly at a record boundary)."""
    left, head, _ = advance_counting(left, head, data)
    return left, head


def advance_counting(left: int, head: bytes, data: bytes) -> tuple[int, bytes, int]:
    """`advance`, and how many records ended within `data`."""
    i, n, ended = 0, len(data), 0
    while i < n:
        if left:
            step = min(left, n - i)
            left -= step
            i += step
            if not left:
                ended += 1
            continue
        take = 5 - len(head)
        head += data[i : i + take]
        i += take
        if len(head) == 5:
            left = head[3] << 8 | head[4]
            head = b""
            if not left:  # an empty record ends with its header
                ended += 1
    return left, head, ended
