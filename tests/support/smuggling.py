"""Request-smuggling cases: an outer request whose length header a SIP server could read
differently from tlstrace, with a whole INVITE as its body (see the README, SIP framing).

Each case is the outer request's header lines around the length; `smuggle(case, n)` builds
the bytes: if a server reads a length of 0 where tlstrace reads the body's length (or the
other way round), that server processes the INVITE as a request of its own, one tlstrace
never framed, counted or traced.
"""

from __future__ import annotations

from tests.support.sip import request

#: name -> the outer request's length lines, with {n} for the INVITE's length. Each one is
#: read differently by at least one of Kamailio, OpenSIPS, Asterisk (chan_sip, pjsip) and
#: FreeSWITCH (sofia-sip); the README says who reads what.
CASES: dict[str, str] = {
    # Kamailio and OpenSIPS accept "_" for "-" in the name; pjsip, sofia, chan_sip do not
    "underscore": "Content_Length: 0\r\nContent-Length: {n}",
    # a length header after leading whitespace (a folded line): Kamailio and OpenSIPS read it
    "leading-space": "X-Note: a\r\n Content-Length: 0\r\nContent-Length: {n}",
    "leading-tab": "X-Note: a\r\n\tl: 0\r\nContent-Length: {n}",
    # the first of two lengths (Kamailio, OpenSIPS, pjsip) or the long form (chan_sip)
    "compact-then-long": "l: 0\r\nContent-Length: {n}",
    "long-then-compact": "Content-Length: 0\r\nl: {n}",
    "two-equal-then-other": "Content-Length: {n}\r\nContent-Length: {n}\r\nl: 0",
    # chan_sip needs the colon right after the name; the others skip the whitespace
    "space-before-colon": "Content-Length : 0\r\nl: {n}",
    # the value folded onto the next line: pjsip, chan_sip and sofia join it, Kamailio ignores
    "folded-value": "Content-Length:\r\n {n}\r\nl: 0",
    "value-continued": "Content-Length: 0\r\n {n}",
    # chan_sip's sscanf reads "+N"; Kamailio skips the line and takes the next length
    "plus-sign": "Content-Length: +0\r\nContent-Length: {n}",
    # Kamailio stops at the first non-digit and keeps looking; chan_sip takes the digits
    "trailing-garbage": "Content-Length: 0x\r\nContent-Length: {n}",
}

#: a start line Kamailio and OpenSIPS read as a length header (they look from the first byte)
START_LINE_CASE = "start-line"


def inner_invite(n: int) -> bytes:
    return request(
        "INVITE",
        f"smuggled-{n}@t",
        uri="sip:alice@example.com",
        headers=["Contact: <sip:mallory@192.0.2.66:5061;transport=tls>"],
    )


def smuggle(case: str, n: int) -> bytes:
    """The outer request of `case` carrying the INVITE `smuggled-<n>@t` as its body."""
    body = inner_invite(n)
    if case == START_LINE_CASE:
        outer = request("OPTIONS", f"outer-{n}@t", body=body)
        return b"l: 0 SIP/2.0" + outer[outer.index(b"\r\n") :]
    lines = CASES[case].format(n=len(body)).encode()
    outer = request("OPTIONS", f"outer-{n}@t")
    return outer.replace(b"Content-Length: 0", lines) + body


def all_cases() -> list[str]:
    return [*CASES, START_LINE_CASE]
