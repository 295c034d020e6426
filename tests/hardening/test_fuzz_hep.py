"""Fuzzing the HEP decoder from the kept corpus of tests/hep/corpus.

tests/hep/test_codec_fuzz.py already fuzzes `decode` with random bytes, chunk soups and
mutations of generated packets, and checks each corpus file's expected outcome. This adds what
it does not do: mutations of the corpus entries themselves, and `StreamDecoder` on streams of
corpus packets, mutated or not, split at random. Only HepDecodeError may escape, whatever
decodes must decode exactly (the independent chunk walker of test_codec_fuzz), and a stream of
good packets gives the same packets however it is split.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hep.codec import HepDecodeError, HepPacket, StreamDecoder, decode
from tests.hep.test_codec_fuzz import check_exact

CORPUS = Path(__file__).parents[1] / "hep" / "corpus"


def load(path: Path) -> bytes:
    lines = path.read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


SEEDS = {p.stem: load(p) for p in sorted(CORPUS.glob("*.hex"))}
GOOD = {k: v for k, v in SEEDS.items() if k.startswith("ok-")}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_corpus_is_there() -> None:
    assert len(GOOD) >= 3 and len(SEEDS) - len(GOOD) >= 8


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 5))):
        op = draw(
            st.sampled_from(["flip", "u16", "insert", "delete", "cut", "splice", "chunk-length"])
        )
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "u16" and i + 2 <= len(data):
            data[i : i + 2] = draw(st.sampled_from([0, 1, 5, 6, 7, 0xFFFF, len(data)])).to_bytes(
                2, "big"
            )
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 12))]
        elif op == "cut":
            del data[i:]
        elif op == "splice":
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            data[i:] = other[draw(st.integers(0, len(other))) :]
        elif op == "chunk-length" and len(data) > 12:
            # the length field of the chunk header at 6 + 6k
            k = draw(st.integers(0, (len(data) - 12) // 6))
            at = 6 + 6 * k + 4
            if at + 2 <= len(data):
                data[at : at + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


@given(mutated())
@FUZZ
def test_mutated_corpus(data: bytes) -> None:
    try:
        packet = decode(data)
    except HepDecodeError as e:
        assert str(e)
        return
    check_exact(data, packet)


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    st.lists(st.sampled_from(sorted(GOOD)), min_size=1, max_size=8),
    st.lists(st.integers(0, 1 << 16), max_size=16),
)
@FUZZ
def test_stream_of_good_packets_in_any_split(names: list[str], cuts: list[int]) -> None:
    stream = b"".join(GOOD[n] for n in names)
    decoder = StreamDecoder()
    got: list[HepPacket] = []
    for piece in pieces_of(stream, cuts):
        got += decoder.feed(piece)
    assert got == [decode(GOOD[n]) for n in names]
    assert decoder.pending == 0


@given(
    st.lists(
        st.one_of(st.sampled_from(sorted(SEEDS)).map(SEEDS.__getitem__), mutated()),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(0, 1 << 16), max_size=16),
)
@FUZZ
def test_stream_of_mutated_packets(packets: list[bytes], cuts: list[int]) -> None:
    """Fed on after errors too (a framing error keeps raising, a bad packet is skipped): only
    HepDecodeError comes out, and what is held back stays bounded."""
    decoder = StreamDecoder()
    for piece in [*pieces_of(b"".join(packets), cuts), b"", b""]:
        try:
            for p in decoder.feed(piece):
                assert isinstance(p, HepPacket)
        except HepDecodeError as e:
            assert str(e)
        assert decoder.pending <= len(b"".join(packets))
