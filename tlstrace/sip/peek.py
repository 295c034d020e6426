"""Cheap looks into a framed SIP message (no full parse)."""

from __future__ import annotations

import re

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id(message: bytes) -> bytes | None:
    """The Call-ID (or compact `i`) header value of a message, if it has one."""
    end = message.find(b"\r\n\r\n")
    m = _CALL_ID.search(message, 0, end + 2 if end >= 0 else len(message))
    if m is None:
        return None
    value = m.group(1).strip(b" \t")
    return value or None
