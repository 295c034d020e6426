"""What SIP framing costs per message: `SipFramer.feed` on typical messages, no sockets.

    python -m bench.framer_cost [--messages N] [--repeat R]

Three cases, each timed with `timeit` over N messages in process CPU time (so that other
work on a shared machine counts less), best of R runs (the minimum is the figure least
disturbed by it):

- `invite`: a typical 785-byte INVITE with SDP, one whole message per `feed` (the relay's
  common case: one TLS record, one message);
- `pipelined`: the same INVITE and its 200 OK, four messages per `feed`;
- `split`: the INVITE in two reads (headers, then body).

Prints ns per message for each.
"""

from __future__ import annotations

import argparse
import time
import timeit

from tlstrace.sip.framing import SipFramer

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=tls>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds;rport\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4;transport=tls>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def measure(messages: int, repeat: int) -> dict[str, float]:
    framer = SipFramer()
    feed = framer.feed
    assert len(feed(INVITE)) == 1
    four = INVITE + OK + INVITE + OK
    assert len(feed(four)) == 4
    head, body = INVITE[: len(INVITE) - len(SDP)], SDP
    assert len(feed(head)) == 0 and len(feed(body)) == 1
    cases = {
        "invite": (lambda: feed(INVITE), messages),
        "pipelined": (lambda: feed(four), messages // 4),
        "split": (lambda: (feed(head), feed(body)), messages),
    }
    out = {}
    for name, (fn, calls) in cases.items():
        best = min(timeit.repeat(fn, number=calls, repeat=repeat, timer=time.process_time))
        out[name] = best / messages * 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print(
        f"INVITE {len(INVITE)} bytes, 200 OK {len(OK)} bytes; {args.messages} messages, "
        f"best of {args.repeat}"
    )
    for name, ns in measure(args.messages, args.repeat).items():
        print(f"  {name:10s} {ns:7.0f} ns per message")


if __name__ == "__main__":
    main()
