"""Making what a client controls fit a HEP packet, sans-IO.

- `short_id`: a correlation id (the Call-ID) longer than `CALL_ID_MAX` bytes becomes its first
  bytes, `~` and 32 hex digits of its SHA-256: exactly `CALL_ID_MAX` bytes, and the same long
  id always gives the same short one (across connections, restarts and tlstrace instances).
- `short_text`: the same for text fields of events (certificate subjects and issuers) longer
  than `FIELD_MAX` characters.
- `truncate_sip`: a SIP message cut to fit `room` bytes, headers first. The copy starts with the
  start line, then the mark `X-Tlstrace-Truncated: length=<original bytes>;cut=body|headers`,
  then the headers; the body is cut first, and only when the headers alone do not fit are
  header lines left out: the dialog's Via, From, To, Call-ID and CSeq headers come first (in
  their order), then the others in their order up to the last whole header that fits (a
  folded header is kept whole or not at all). Nothing else is changed: Content-Length still
  says the original length. The work is a few scans in C (one regex split of the header
  section, one `rfind`, joins), none per header line, so a 65 kB message of 16,000 header
  lines or folds costs about what a short one does in Python.
- `unmark`: a client cannot fake the mark. A message that fits is traced as it came, except
  that each `X-Tlstrace-Truncated` in it (exactly so spelled) becomes `X-Tlstrace-Untrusted`
  (the same length, so nothing else moves); the tracer calls it only when a substring test
  finds the name. The relayed bytes are never changed.
"""

from __future__ import annotations

import hashlib
import re
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

#: A header the dialog is indexed by (what Homer shows a message under: Via, From, To, Call-ID,
#: CSeq, full and compact forms), with its folded continuation lines: in the text of the header
#: section from the start line's CRLF on, each header is a CRLF and its lines, and it ends at
#: the first CRLF not followed by a space or a tab (or at the end).
_ESSENTIAL = re.compile(
    rb"(\r\n(?=[vftic])(?:via|v|from|f|to|t|call-id|i|cseq)[ \t]*:"
    rb"[^\r]*(?:\r(?!\n(?![ \t]))[^\r]*)*)",
    re.IGNORECASE,
)
#: The first header of each kind of those (the Call-ID's is the fourth).
_KINDS = tuple(
    re.compile(rb"\r\n(?:%s)[ \t]*:" % names, re.IGNORECASE)
    for names in (b"via|v", b"from|f", b"to|t", b"call-id|i", b"cseq")
)
#: Where a header ends: a CRLF not followed by a space or a tab.
_HEADER_END = re.compile(rb"\r\n(?![ \t])")
#: Every byte but space, tab, CR and LF made an `x` (see `_cut`).
_FLAT = bytes.maketrans(
    bytes(range(256)), bytes(c if c in b" \t\r\n" else 0x78 for c in range(256))
)
#: What a client's own header named like the mark becomes in the traced copy (same length).
CLIENT_MARK = b"X-Tlstrace-Untrusted"


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
    return value[: bound - 1 - _HASH_HEX] + "~" + digest


def mark_line(length: int, cut: Cut) -> bytes:
    return MARK + f": length={length};cut={cut}\r\n".encode()


def unmark(message: bytes) -> bytes:
    """`message` with each `MARK` (exactly so spelled) renamed `CLIENT_MARK`: what the tracer
    sends of a message whose bytes hold the name, so that a traced copy holds `MARK` only where
    `truncate_sip` wrote it. Call it only when `MARK in message` (one substring test)."""
    return message.replace(MARK, CLIENT_MARK)


def _cut(rest: bytes, budget: int) -> int:
    """The length of the longest prefix of `rest` (headers, each CRLF and its lines) that
    has at most `budget` bytes and ends where a header ends (never inside a folded one)."""
    if len(rest) <= budget:
        return len(rest)
    at = rest.rfind(b"\r\n", 0, budget + 2)
    if at <= 0:
        return 0
    if rest[at + 2 : at + 3] not in (b" ", b"\t"):  # the common case: a header ends there
        return at
    # inside a folded header: back to where it starts, the last CRLF before that is not
    # followed by a space or a tab (a translation and three rfinds, in C)
    flat = rest[:at].translate(_FLAT)
    return max(flat.rfind(b"\r\nx"), flat.rfind(b"\r\n\r"), flat.rfind(b"\r\n\n"), 0)


def truncate_sip(message: bytes, room: int, call_id: bytes | None = None) -> tuple[bytes, Cut]:
    """A copy of `message` of at most `room` bytes, marked (see the module docstring), and
    what was cut. `call_id` (the short form of a long Call-ID) replaces the Call-ID header's
    value when that header alone is too long to keep. `room` must be at least 200."""
    end = message.find(b"\r\n\r\n")
    head = message[: end + 2] if end >= 0 else message
    body_at = end + 4 if end >= 0 else len(message)
    first = head.find(b"\r\n")
    start = head[:first] if first >= 0 else head
    lines_part = head[first + 2 :] if first >= 0 else b""
    mark = mark_line(len(message), "body")
    # start line, mark, headers, blank line: is there room for a piece of the body?
    whole_head = len(start) + 2 + len(mark) + len(lines_part) + 2
    if whole_head <= room:
        body = message[body_at : body_at + room - whole_head]
        return b"".join((start, b"\r\n", mark, lines_part, b"\r\n", body)), "body"
    mark = mark_line(len(message), "headers")[:-2]  # each header brings its CRLF
    budget = room - len(mark) - 6  # CRLFs: the start line's, the last header's, the blank line
    if len(start) > budget // 2:  # a start line padded by the client: keep a piece of it
        start = start[: budget // 2]
    budget -= len(start)
    # the header section as pieces CRLF + header (a header's folded lines stay with it)
    text = message[first:end] if end >= 0 else message[first:] if first >= 0 else b""
    if text.endswith(b"\r\n"):  # no blank line: the headers end with the message
        text = text[:-2]
    parts = _ESSENTIAL.split(text)  # other, essential, other, essential, ..., other
    kept = b"".join(parts[1::2])
    if len(kept) > budget:  # the dialog's headers alone do not fit: keep what does, in order
        kept = _fit_each(kept, budget, call_id)
    rest = b"".join(parts[0::2])
    rest = rest[: _cut(rest, budget - len(kept))]
    return b"".join((start, b"\r\n", mark, kept, rest, b"\r\n\r\n")), "headers"


def _fit_each(joined: bytes, budget: int, call_id: bytes | None) -> bytes:
    """What fits `budget` of the dialog's headers `joined` (each a CRLF and its lines), when
    they do not all fit: first the first header of each kind (Via, From, To, Call-ID, CSeq;
    a Call-ID too long to keep gets the value `call_id` when one is given), then the others
    in order up to the last whole one that fits. A few searches, no loop over the headers."""
    firsts = []
    for kind in _KINDS:
        m = kind.search(joined)
        if m is not None:
            stop = _HEADER_END.search(joined, m.end())
            firsts.append(
                (m.start(), stop.start() if stop is not None else len(joined), kind is _KINDS[3])
            )
    firsts.sort()
    kept, others, at = [], [], 0
    for start, end, is_call_id in firsts:
        h = joined[start:end]
        if len(h) > budget and is_call_id and call_id is not None:
            h = h.split(b":", 1)[0] + b": " + call_id
        if len(h) <= budget:
            kept.append(h)
            budget -= len(h)
        others.append(joined[at:start])
        at = end
    others.append(joined[at:])
    rest = b"".join(others)
    kept.append(rest[: _cut(rest, budget)])
    return b"".join(kept)
