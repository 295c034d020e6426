"""Cheap looks into a framed SIP message (no full parse)."""

from __future__ import annotations

import re

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id(message: bytes) -> bytes | None:
    """The Call-ID (or compact `i`) header value of a message, if it has one.

    The first match anywhere is the header's when no blank line comes before it (a match in
    the body means there is none in the headers): one regex scan, and a `find` up to it."""
    m = _CALL_ID.search(message)
    if m is None or message.find(b"\r\n\r\n", 0, m.start() + 2) >= 0:
        return None
    value = m.group(1).strip(b" \t")
    return value or None
