"""atheris (libFuzzer) harness for the HEP decoder (`decode` and `StreamDecoder`).

    pip install atheris
    mkdir -p /tmp/hep-fuzz
    python -m tests.hardening.fuzz_hep_decoder -max_total_time=600 /tmp/hep-fuzz

The seeds are the hex files of tests/hep/corpus, which libFuzzer cannot read as they are:
the harness adds them itself when the first corpus directory is empty. Only HepDecodeError may
escape; whatever decodes must re-encode to the same packet.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from hep.codec import HepDecodeError, StreamDecoder, decode, encode

SEEDS = Path(__file__).parents[1] / "hep" / "corpus"


def test_one_input(data: bytes) -> None:
    try:
        packet = decode(data)
    except HepDecodeError:
        pass
    else:
        assert decode(encode(packet)) == packet
    decoder = StreamDecoder()
    step = 1 + (data[0] if data else 0) % 64
    for i in range(0, len(data) * 2, step):
        with contextlib.suppress(HepDecodeError):
            decoder.feed((data + data)[i : i + step])


def seed(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        for path in SEEDS.glob("*.hex"):
            lines = path.read_text().splitlines()
            raw = bytes.fromhex("".join(line for line in lines if not line.startswith("#")))
            (directory / path.stem).write_bytes(raw)


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        seed(dirs[0])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
