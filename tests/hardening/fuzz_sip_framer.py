"""atheris (libFuzzer) harness for the SIP framer, for runs longer than the test suite's.

    pip install atheris
    mkdir -p /tmp/sip-fuzz
    python -m tests.hardening.fuzz_sip_framer -max_total_time=600 /tmp/sip-fuzz \
        tests/hardening/corpus/sip

libFuzzer adds what it finds to the first directory, so give it a scratch one and keep
tests/hardening/corpus/sip for the seeds; copy an input worth keeping there by hand, named
`<outcome>--<what>.sip` (see test_fuzz_framer.py). The first bytes of each input choose the
settings and where the stream is split into reads; the rest is the stream. A crash is an
exception (the framer must never raise) or a broken invariant (AssertionError).
"""

from __future__ import annotations

import itertools
import sys

import atheris

with atheris.instrument_imports():
    from tlstrace.sip.framing import (
        Dropped,
        FramingError,
        KeepAlive,
        Message,
        Ping,
        SipFramer,
    )

EVENT_TYPES = (Message, Ping, KeepAlive, Dropped, FramingError)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    framer = SipFramer(
        max_msg_size=fdp.PickValueInList([1024, 4096, 65535]),
        pingpong=fdp.ConsumeBool(),
        crlf_drop=fdp.ConsumeBool(),
        max_chunks=fdp.PickValueInList([None, 1, 2, 4, 16]),
    )
    cuts = sorted(fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    bounds = [0, *(min(c, len(stream)) for c in cuts), len(stream)]
    pos = 0
    for a, b in itertools.pairwise(bounds):
        events = framer.feed(stream[a:b])
        for i, ev in enumerate(events):
            assert isinstance(ev, EVENT_TYPES), ev
            if isinstance(ev, FramingError):
                assert i == len(events) - 1 and framer.buffered == 0
                return
            if isinstance(ev, Message):
                assert len(ev.data) <= framer.max_msg_size
                found = stream.find(ev.data, pos)
                assert found >= 0
                pos = found + len(ev.data)
        assert framer.buffered <= framer.max_msg_size


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
