"""TLS record boundaries, sans-IO."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tlstrace.tls.records import advance, advance_counting


def record(body: bytes) -> bytes:
    return b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body


def test_whole_records_end_at_a_boundary() -> None:
    assert advance(0, b"", record(b"x" * 100)) == (0, b"")
    assert advance(0, b"", record(b"a") + record(b"bb") + record(b"")) == (0, b"")


def test_a_dripped_record_is_inside_until_its_last_byte() -> None:
    data = record(b"y" * 40)
    state = (0, b"")
    for i, byte in enumerate(data):
        state = advance(*state, bytes([byte]))
        assert (state != (0, b"")) == (i < len(data) - 1)


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_any_split(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(record(b) for b in bodies)
    cut = data.draw(st.integers(0, len(stream)))
    boundaries = {0}
    pos = 0
    for b in bodies:
        pos += 5 + len(b)
        boundaries.add(pos)
    state = advance(0, b"", stream[:cut])
    assert (state == (0, b"")) == (cut in boundaries)
    assert advance(*state, stream[cut:]) == (0, b"")


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.data())
def test_records_ended_are_counted_however_the_stream_is_split(
    bodies: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(record(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    state: tuple[int, bytes] = (0, b"")
    ended = 0
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        left, head, n = advance_counting(*state, stream[start:end])
        state = (left, head)
        ended += n
    assert state == (0, b"") and ended == len(bodies)
