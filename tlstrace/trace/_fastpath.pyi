"""tlstrace/trace/_fastpath.c: see there, and its Python twin tlstrace/trace/fastpath.py."""

from collections import OrderedDict

from tlstrace.trace.fastpath import Parts, Session

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
    /,
) -> int: ...
