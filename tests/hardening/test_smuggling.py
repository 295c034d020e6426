"""Request smuggling, differential: the real Kamailio from Debian behind the real relay.

Each case is an outer OPTIONS whose length header Kamailio (or another SIP server tlstrace
may front: OpenSIPS, Asterisk, FreeSWITCH) could read differently from tlstrace, with a
whole INVITE as its body (tests/support/smuggling.py). Kamailio logs every request it
processes (xlog in its request_route); tlstrace traces every message it frames to a HEP sink
and counts it. The relay must refuse each case (its own framing error kind, logged and
counted) and the two sides must have seen exactly the same requests: Kamailio never
processes a message tlstrace did not frame, count and trace. Legitimate clients run
alongside (and a set of messages in every form the servers read the same way) with zero
errors.
"""

from __future__ import annotations

import collections
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import LegitTraffic, Metrics
from tests.support.hepsink import HepSink
from tests.support.kamailio_sip import KamailioSip, available
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request
from tests.support.smuggling import all_cases, smuggle
from tlstrace.sip.peek import call_id

pytestmark = pytest.mark.skipif(not available(), reason="kamailio is not installed: make deps")

_KAM_REQUEST = re.compile(r"KAM (\S+) from \S+ ci=(\S*)")

#: legitimate forms of the length header every server reads the same way
LEGIT_FORMS = {
    "compact": ("l: 0", b""),
    "lower-case": ("content-length: 0", b""),
    "upper-case": ("CONTENT-LENGTH:0", b""),
    "tabs": ("Content-Length:\t 5 \t", b"hello"),
    "leading-zeros": ("Content-Length: 0005", b"hello"),
    "folded-subject": ("Subject: a\r\n folded subject\r\nContent-Length: 5", b"hello"),
    "x-header": ("X-Content-Length: 99\r\nContent-Length: 0", b""),
}


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[KamailioSip]:
    k = KamailioSip(tmp_path / "kamailio")
    yield k
    k.stop()


def kamailio_requests(k: KamailioSip) -> collections.Counter[str]:
    """Call-ID of every request Kamailio processed, with how often."""
    return collections.Counter(ci for _, ci in _KAM_REQUEST.findall(k.log))


def traced_requests(sink: HepSink) -> collections.Counter[str]:
    """Call-ID of every request tlstrace framed from a client and traced."""
    out: collections.Counter[str] = collections.Counter()
    for p in sink.packets(proto_type=1):
        if not p.payload.startswith(b"SIP/2.0 "):
            cid = call_id(p.payload)
            out[cid.decode() if cid else ""] += 1
    return out


def wait_requests(k: KamailioSip, call_ids: list[str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = kamailio_requests(k)
        missing = [c for c in call_ids if c not in seen]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Kamailio never saw {missing}:\n{k.log[-3000:]}")
        time.sleep(0.05)


def test_kamailio_sees_what_tlstrace_framed(
    relay_factory: Callable[..., RelayProcess],
    kamailio: KamailioSip,
    legit: Callable[..., LegitTraffic],
    record: Record,
) -> None:
    with HepSink() as sink:
        relay = relay_factory(
            {
                "trace_on": True,
                "hep_id": [sink.hep_id],
                "trace_sessions": False,
                "listener": [RelayProcess.tls_listener(kamailio.port)],
            }
        )
        before = Metrics.scrape(relay)
        traffic = legit(relay.port(), pace=0.05)

        # the legitimate forms, one connection, each answered by Kamailio
        with TlsClient(relay.port()) as c:
            for name, (lines, body) in LEGIT_FORMS.items():
                msg = (
                    request("OPTIONS", f"form-{name}@t").replace(
                        b"Content-Length: 0", lines.encode()
                    )
                    + body
                )
                c.send(msg)
                (answer,) = c.recv_messages(1)
                assert answer.startswith(b"SIP/2.0 200 Kamailio OK"), (name, answer[:80])
                assert f"Call-ID: form-{name}@t\r\n".encode() in answer

        cases = all_cases()
        offenders: list[int] = []
        for i, case in enumerate(cases):
            evil = smuggle(case, i)
            # alone on a connection that already carried an answered request
            with TlsClient(relay.port()) as c:
                c.send(request("OPTIONS", f"before-{i}@t"))
                assert c.recv_messages(1)[0].startswith(b"SIP/2.0 200 Kamailio OK")
                offenders.append(c.local_port)
                with contextlib.suppress(OSError, ssl.SSLError):
                    c.send(evil)
                assert c.wait_closed(), case
            # pipelined in one TLS record behind a legitimate request
            with TlsClient(relay.port()) as c:
                offenders.append(c.local_port)
                with contextlib.suppress(OSError, ssl.SSLError):
                    c.send(request("OPTIONS", f"piped-{i}@t") + evil)
                assert c.wait_closed(), case

        traffic.stop()
        assert traffic.errors == [], traffic.errors[:5]
        wait_requests(
            kamailio,
            [f"before-{i}@t" for i in range(len(cases))]
            + [f"piped-{i}@t" for i in range(len(cases))],
        )
        sink.settle()
        after = Metrics.scrape(relay)

    seen_by_kamailio = kamailio_requests(kamailio)
    traced = traced_requests(sink)
    counted = after.delta(before, "tlstrace_sip_messages_total", direction="from_client")
    smuggled = sorted(c for c in seen_by_kamailio if "smuggled" in c or "outer" in c)
    assert smuggled == [], f"Kamailio processed requests tlstrace refused: {smuggled}"
    assert seen_by_kamailio == traced, (seen_by_kamailio - traced, traced - seen_by_kamailio)
    assert sum(seen_by_kamailio.values()) == counted
    log = relay.log
    for port in offenders:
        assert re.search(rf"127\.0\.0\.1:{port} closed: Framing error \(ambiguous_length: ", log), (
            port
        )
    assert after.delta(before, "tlstrace_framing_errors_total", kind="ambiguous_length") == len(
        offenders
    )
    assert after.delta(before, "tlstrace_framing_errors_total") == len(offenders)
    record(
        cases=cases,
        offenders=len(offenders),
        refused=len(offenders),
        kamailio_requests=sum(seen_by_kamailio.values()),
        traced=sum(traced.values()),
        counted=counted,
        smuggled_seen_by_kamailio=len(smuggled),
        legit_sent=traffic.sent,
        legit_answered=traffic.answered,
        legit_errors=len(traffic.errors),
        legit_forms=len(LEGIT_FORMS),
    )
