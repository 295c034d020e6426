"""The senders' bounded packet queue, without sockets: bounds, FIFO order, batches of whole
packets for one TCP write."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hep.packetqueue import PacketQueue


def test_bounded_by_packets_and_by_bytes() -> None:
    q = PacketQueue(3, 10)
    assert q.add(b"aaaa") and q.add(b"bbbb")
    assert not q.add(b"ccc")  # 11 bytes: over the byte bound, nothing queued
    assert (len(q), q.size) == (2, 8)
    assert q.add(b"cc")
    assert not q.add(b"")  # a fourth packet: over the count bound
    assert (len(q), q.size) == (3, 10)
    with pytest.raises(ValueError):
        PacketQueue(0, 1)


def test_take_joins_whole_packets_oldest_first() -> None:
    q = PacketQueue(100, 1000)
    for p in (b"one", b"two", b"three"):
        q.add(p)
    assert q.take(1000) == (b"onetwothree", 3)
    assert (len(q), q.size, bool(q)) == (0, 0, False)
    assert q.take(1000) == (b"", 0)


def test_take_stops_at_the_bound_but_takes_at_least_one() -> None:
    q = PacketQueue(100, 1000)
    for p in (b"aaaa", b"bbbb", b"cccc"):
        q.add(p)
    assert q.take(9) == (b"aaaabbbb", 2)  # a third would make 12
    assert q.take(2) == (b"cccc", 1)  # larger than the bound: alone
    assert q.size == 0


def test_first_pop_and_clear() -> None:
    q = PacketQueue(10, 100)
    q.add(b"x1")
    q.add(b"y22")
    assert q.first() == b"x1"
    assert q.pop() == b"x1" and q.size == 3
    q.add(b"z")
    assert q.clear() == 2
    assert (len(q), q.size) == (0, 0)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.binary(max_size=40)),
            st.tuples(st.just("take"), st.integers(0, 120)),
            st.tuples(st.just("pop"), st.none()),
        ),
        max_size=60,
    )
)
@settings(max_examples=200)
def test_any_sequence_keeps_order_and_bounds(ops: list[tuple[str, object]]) -> None:
    """The bytes that leave (by take or pop) are the accepted packets in order, and the
    bounds always hold."""
    q = PacketQueue(8, 100)
    accepted: list[bytes] = []
    out: list[bytes] = []
    for op, arg in ops:
        if op == "add":
            assert isinstance(arg, bytes)
            if q.add(arg):
                accepted.append(arg)
        elif op == "take":
            assert isinstance(arg, int)
            before = len(q)
            data, n = q.take(arg)
            assert n == min(before, n) and (n > 0) == (before > 0)
            if n > 1:
                assert len(data) <= arg
            out.append(data)
        elif q:
            out.append(q.pop())
        assert len(q) <= 8 and q.size <= 100
    out.append(q.take(1 << 20)[0])
    assert b"".join(out) == b"".join(accepted)
    assert q.size == 0
