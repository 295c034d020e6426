"""Cheap looks into a framed SIP message (no full parse)."""

from __future__ import annotations

import re

#: The first Call-ID header line (full or compact name) or the blank line that ends the header
#: section, whichever comes first: a Call-ID line matches with its value in group 1 (spaces
#: and tabs at its end included), the blank line with group 1 None
CALL_ID_LINE = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)|\r\n\r\n", re.IGNORECASE)


def call_id(message: bytes) -> bytes | None:
    """The Call-ID (or compact `i`) header value of a message, if it has one: one regex scan,
    which stops at the end of the header section."""
    m = CALL_ID_LINE.search(message)
    if m is None:
        return None
    value = m.group(1)
    return value.rstrip(b" \t") or None if value is not None else None
