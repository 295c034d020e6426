"""TLS record boundary tracking, sans-IO."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tlstrace.tls.records import RecordTracker


def record(body: bytes) -> bytes:
    return b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body


def test_whole_records_are_not_partial() -> None:
    t = RecordTracker()
    t.feed(record(b"x" * 100))
    assert not t.partial
    t.feed(record(b"a") + record(b"bb") + record(b""))
    assert not t.partial


def test_dripped_record_is_partial_until_complete() -> None:
    data = record(b"y" * 40)
    t = RecordTracker()
    for i, byte in enumerate(data):
        t.feed(bytes([byte]))
        assert t.partial == (i < len(data) - 1)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_any_split(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(record(b) for b in bodies)
    cut = data.draw(st.integers(0, len(stream)))
    t = RecordTracker()
    t.feed(stream[:cut])
    boundaries = {0}
    pos = 0
    for b in bodies:
        pos += 5 + len(b)
        boundaries.add(pos)
    assert t.partial == (cut not in boundaries)
    t.feed(stream[cut:])
    assert not t.partial
