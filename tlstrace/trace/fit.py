"""Making what a client controls fit a HEP packet, sans-IO.

- `short_id`: a correlation id (the Call-ID) longer than `CALL_ID_MAX` bytes becomes its first
  bytes, `~` and 32 hex digits of its SHA-256: exactly `CALL_ID_MAX` bytes, and the same long
  id always gives the same short one (across connections, restarts and tlstrace instances).
- `short_text`: the same for text fields of events (certificate subjects and issuers) longer
  than `FIELD_MAX` characters.
- `truncate_sip`: a SIP message cut to fit `room` bytes, headers first. The copy starts with the
  start line, then the mark `X-Tlstrace-Truncated: length=<original bytes>;cut=body|headers`,
  then the headers; the body is cut first, and only when the headers alone do not fit are
  header lines left out (the last ones first, the dialog's Via, From, To, Call-ID and CSeq
  kept before any other). Nothing else is changed: Content-Length still says the original
  length.
"""

from __future__ import annotations

import hashlib
from typing import Literal

#: Longest correlation id sent as it is (bytes). Kamailio's sipcapture schema stores it in a
#: VARCHAR(256) column.
CALL_ID_MAX = 256
#: Longest text field of a traced event sent as it is (characters).
FIELD_MAX = 1024
#: Hex digits of SHA-256 kept in a shortened value (128 bits).
_HASH_HEX = 32
#: The header that marks a truncated copy.
MARK = b"X-Tlstrace-Truncated"

Cut = Literal["body", "headers"]

#: Headers kept before any other when the header section does not fit: what Homer indexes a
#: message by (full and compact forms).
_ESSENTIAL = frozenset({b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"})


def short_id(value: bytes, bound: int = CALL_ID_MAX) -> bytes:
    """`value` itself when it has at most `bound` bytes; otherwise a stable short form of
    exactly `bound` bytes (or fewer, when the prefix had to end on a UTF-8 boundary)."""
    if len(value) <= bound:
        return value
    digest = hashlib.sha256(value).hexdigest()[:_HASH_HEX].encode()
    cut = bound - 1 - _HASH_HEX
    # do not cut inside a UTF-8 sequence (value[cut] is the first byte left out)
    for _ in range(3):
        if not 0x80 <= value[cut] < 0xC0:
            break
        cut -= 1
    prefix = value[:cut]
    return prefix + b"~" + digest


def short_text(value: str, bound: int = FIELD_MAX) -> str:
    """`value` itself when it has at most `bound` characters; otherwise its first characters,
    `~` and 32 hex digits of the SHA-256 of its UTF-8: exactly `bound` characters."""
    if len(value) <= bound:
        return value
    data = value.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(data).hexdigest()[:_HASH_HEX]
    return value[:bound - 1 - _HASH_HEX] + "~" + digest


def mark_line(length: int, cut: Cut) -> bytes:
    return MARK + f": length={length};cut={cut}\r\n".encode()


def _name(line: bytes) -> bytes:
    return line.split(b":", 1)[0].strip().lower()


def truncate_sip(message: bytes, room: int,
                 call_id: bytes | None = None) -> tuple[bytes, Cut]:
    """A copy of `message` of at most `room` bytes, marked (see the module docstring), and
    what was cut. `call_id` (the short form of a long Call-ID) replaces the Call-ID header's
    value when that header alone is too long to keep. `room` must be at least 200."""
    end = message.find(b"\r\n\r\n")
    head = message[:end + 2] if end >= 0 else message
    body_at = end + 4 if end >= 0 else len(message)
    first = head.find(b"\r\n")
    start = head[:first] if first >= 0 else head
    lines_part = head[first + 2:] if first >= 0 else b""
    mark = mark_line(len(message), "body")
    # start line, mark, headers, blank line: is there room for a piece of the body?
    whole_head = len(start) + 2 + len(mark) + len(lines_part) + 2
    if whole_head <= room:
        body = message[body_at:body_at + room - whole_head]
        return b"".join((start, b"\r\n", mark, lines_part, b"\r\n", body)), "body"
    mark = mark_line(len(message), "headers")
    budget = room - len(mark) - 4  # the start line's CRLF and the blank line
    if len(start) > budget // 2:  # a start line padded by the client: keep a piece of it
        start = start[:budget // 2]
    budget -= len(start)
    lines = lines_part.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    # header lines may be folded (a line starting with space or tab continues the previous)
    headers: list[bytes] = []
    for line in lines:
        if headers and line[:1] in (b" ", b"\t"):
            headers[-1] += b"\r\n" + line
        else:
            headers.append(line)
    keep = [False] * len(headers)
    for essential in (True, False):
        for i, h in enumerate(headers):
            if keep[i] or (_name(h) in _ESSENTIAL) != essential:
                continue
            if len(h) + 2 > budget and essential and call_id is not None \
                    and _name(h) in (b"call-id", b"i"):
                h = headers[i] = h.split(b":", 1)[0] + b": " + call_id
            if len(h) + 2 <= budget:
                keep[i] = True
                budget -= len(h) + 2
    kept = b"".join(h + b"\r\n" for h, k in zip(headers, keep, strict=True) if k)
    return b"".join((start, b"\r\n", mark, kept, b"\r\n")), "headers"
