"""The label a SIP message is counted under: its method, or its status class ("2xx").

Runs twice per relayed message (counted in and out), so it is compiled (mypyc) and remembers
labels by a message's first bytes.
"""

from __future__ import annotations

from typing import Final

#: Methods counted by name; anything else is "other" (label sets stay bounded).
KNOWN_METHODS: Final = frozenset(
    b"INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER "
    b"MESSAGE UPDATE".split()
)

_STATUS_CLASSES = {str(d).encode(): f"{d}xx" for d in range(1, 7)}
_METHOD_LABELS = {m: m.decode() for m in KNOWN_METHODS}
#: labels by a message's first 10 bytes, learnt as they come: enough to hold every known
#: method and its space ("SUBSCRIBE ", "INVITE sip"), or a status class ("SIP/2.0 20"), so
#: a prefix never stands for two labels
_BY_PREFIX: dict[bytes, str] = {}
_BY_PREFIX_MAX: Final = 1024


def message_label(data: bytes) -> str:
    """Method of a request, or status class ("2xx") of a response, for metric labels."""
    prefix = data[:10]
    label = _BY_PREFIX.get(prefix)
    if label is None:
        space = data.find(b" ", 0, 20)
        token = data[:space] if space > 0 else b""
        if token == b"SIP/2.0":
            label = _STATUS_CLASSES.get(data[8:9], "other")
        else:
            label = _METHOD_LABELS.get(token, "other")
        if len(_BY_PREFIX) < _BY_PREFIX_MAX:
            _BY_PREFIX[prefix] = label
    return label
