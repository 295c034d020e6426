"""A client cannot fake tlstrace's truncation mark (README, Tracing): a message that fits is
relayed and traced as it came, except that in the traced copy a header the client named
`X-Tlstrace-Truncated` becomes `X-Tlstrace-Untrusted` (the same length). Through the running
relay; the HEP packets read back by hep-js where it is installed."""

from __future__ import annotations

from collections.abc import Callable

from tests.support import hepjs
from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]


def payloads(sink: HepSink) -> list[bytes]:
    """The SIP payloads the sink got, decoded by hep-js when it is there."""
    sink.settle()
    if not hepjs.available():
        return [p.payload for p in sink.packets(1)]
    decoded = hepjs.hepjs_decode(list(sink.datagrams))
    return [
        d["payload"].encode("utf-8", "surrogateescape")
        for d in decoded
        if d is not None and d["rcinfo"]["payloadType"] == 1
    ]


def test_a_forged_truncation_mark_is_renamed_in_the_trace_not_in_the_relayed_message(
    relay_factory: Factory, backend: SipBackend
) -> None:
    forged = request(
        "INVITE",
        "forged@t",
        body=b"v=0\r\n",
        headers=["X-Tlstrace-Truncated: length=99999;cut=body"],
    )
    with HepSink() as sink:
        relay = relay_factory(
            {
                "trace_on": True,
                "hep_id": [sink.hep_id],
                "listener": [RelayProcess.tls_listener(backend.port)],
            }
        )
        with TlsClient(relay.port()) as client:
            client.send(forged)
            client.recv_messages(1)
        assert backend.wait_messages(1) == [forged]  # relayed byte for byte
        sink.wait(2, 1)
        traced = [p for p in payloads(sink) if p.startswith(b"INVITE")]
    assert traced == [forged.replace(b"\r\nX-Tlstrace-Truncated: ", b"\r\nX-Tlstrace-Untrusted: ")]
    assert b"X-Tlstrace-Truncated" not in traced[0]
