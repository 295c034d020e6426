"""The tracer's per-message fast path, sans-IO: the HEP packets of the messages of one read or
write that fit as they are, built in one call (`encode_batch`).

`ConnectionTracer.messages` calls it for a batch; it walks the chunks from `start` and, for
each message it takes, appends to `out` the packet of the `first` template (and of `second`,
before it when `second_first`, else after it), then, for a Call-ID whose hash is not in
`seen`, the session record (`events.session_record_at`) in a packet of the session's template
(`seen` remembers it, the oldest forgotten past `seen_max`). Keep-alives (a chunk starting
with whitespace) are skipped. It stops at the first chunk it does not take, with nothing of it
done, and returns its index (`len(chunks)` when it took them all): an empty chunk, a message
larger than `room`, one holding the truncation mark (`fit.MARK`), one whose Call-ID is longer
than `fit.CALL_ID_MAX`, and, when its Call-ID is new, one whose Call-ID JSON would escape or
whose record's packet would exceed `max_packet`. The tracer handles that chunk in Python and
calls again from the next.

Templates come as `PacketTemplate.parts`, the session as (`events.session_record_head(...)`,
its template's parts). The C module `_fastpath` (setup.py builds it) does the same in one
pass per message, without a Python call per packet; this module is what runs when it is not
built, and what tests/test_trace_fastpath.py checks it against.
"""

from __future__ import annotations

from collections import OrderedDict

from tlstrace.sip.framing import WHITESPACE
from tlstrace.sip.peek import CALL_ID_LINE
from tlstrace.trace.fit import CALL_ID_MAX, MARK

__all__ = ["Parts", "Session", "encode_batch"]

#: PacketTemplate.parts
Parts = tuple[bytes, bytes, bytes, bytes, int]
#: the session record's head (events.session_record_head) and its template's parts
Session = tuple[bytes, Parts]

_HEP_MAX = 0xFFFF
#: events._JSON_PLAIN's bytes: printable ASCII but `"` and `\\`
_JSON_PLAIN = frozenset(range(0x20, 0x7F)) - {0x22, 0x5C}


def _encode(t: Parts, ts: bytes, cid: bytes | None, payload: bytes) -> bytes:
    """PacketTemplate.encode_at(ts, payload, cid) from the template's parts."""
    head, mid, mid_tail, tail_pl, fixed = t
    n = len(payload)
    if cid is None:
        return b"".join(
            (
                b"HEP3",
                (fixed + n).to_bytes(2, "big"),
                head,
                ts,
                mid_tail,
                b"\x00\x00\x00\x0f",
                (6 + n).to_bytes(2, "big"),
                payload,
            )
        )
    c = len(cid)
    return b"".join(
        (
            b"HEP3",
            (fixed + n + 6 + c).to_bytes(2, "big"),
            head,
            ts,
            mid,
            b"\x00\x00\x00\x11",
            (6 + c).to_bytes(2, "big"),
            cid,
            tail_pl,
            (6 + n).to_bytes(2, "big"),
            payload,
        )
    )


def encode_batch(
    chunks: list[bytes],
    start: int,
    ts: bytes,
    first: Parts,
    second: Parts | None,
    second_first: bool,
    room: int,
    session: Session | None,
    seen: OrderedDict[int, None],
    seen_max: int,
    max_packet: int,
    out: list[bytes],
) -> int:
    """The fast path's packets of chunks[start:] appended to `out`; the index of the first
    chunk it does not take (see the module's docstring)."""
    if len(ts) != 20:
        raise ValueError("ts: the 20 bytes of timestamp_chunks")
    search = CALL_ID_LINE.search
    for i in range(max(start, 0), len(chunks)):
        data = chunks[i]
        if not data:
            return i
        if data[0] in WHITESPACE:  # a keep-alive
            continue
        if len(data) > room or data.find(MARK) >= 0:
            return i
        m = search(data)
        cid = m.group(1) if m is not None else None
        if cid is not None:
            cid = cid.rstrip(b" \t") or None
        c = 0 if cid is None else len(cid)
        if c > CALL_ID_MAX:
            return i
        key = 0
        new_call = False
        if cid is not None and session is not None:
            key = hash(cid)
            new_call = key not in seen
            if new_call and (
                not _JSON_PLAIN.issuperset(cid)
                or session[1][4] + len(session[0]) + c + 2 + 6 + c > min(max_packet, _HEP_MAX)
            ):
                return i
        n = len(data)
        if first[4] + n + 6 + c > _HEP_MAX or (
            second is not None and second[4] + n + 6 + c > _HEP_MAX
        ):
            return i
        if second is not None and second_first:
            out.append(_encode(second, ts, cid, data))
        out.append(_encode(first, ts, cid, data))
        if second is not None and not second_first:
            out.append(_encode(second, ts, cid, data))
        if new_call and session is not None:
            seen[key] = None
            if len(seen) > seen_max:
                seen.popitem(last=False)
            out.append(_encode(session[1], ts, cid, b"".join((session[0], cid or b"", b'"}'))))
    return len(chunks)
