"""How the SIP servers tlstrace is placed in front of find where a message ends in a stream:
models, in Python, of the C code each one runs, written from reading their sources (the
README's SIP framing section names the files). Each function takes the bytes of a stream
starting at a message's first byte and returns the size of that first message as the server
frames it (headers and body), or None when it finds no usable length (an error, or it would
wait for more bytes).

They model the framing step only, with each server's defaults: what the server does after
(its full parser, its error replies) does not change where it thinks the next message starts.
The fuzz test (test_fuzz_framer.py) checks that every message tlstrace frames is framed to
the same size by all of them.
"""

from __future__ import annotations

import re

_DIGITS = b"0123456789"
_INT_MAX = 2**31 - 1


def kamailio(data: bytes) -> int | None:
    """Kamailio `tcp_read_headers` (src/core/tcp_read.c); OpenSIPS `tcp_parse_headers`
    (net/proto_tcp/tcp_common.h) is the same state machine (its bound is its read buffer
    instead of INT_MAX). A line may end in LF alone; the headers end at LF LF or LF CR LF;
    `Content-Length` (with `-` or `_`) or `l`, at a line's start or after whitespace,
    whitespace before the colon; the first value that parses wins, the rest are skipped."""
    name = b"ontent-length"
    state = "skip_empty"
    k = 0  # position in `name` while matching it
    has = False
    clen = 0
    i, n = 0, len(data)

    def body_at(j: int) -> int | None:
        return j + clen if has else None

    while i < n:
        c = data[i]
        if state == "skip":
            j = data.find(b"\n", i)
            if j < 0:
                return None
            i, state = j + 1, "lf"
            continue
        if state == "skip_empty":
            if c in b"\n\r \t":
                pass
            elif c in b"Cc":
                state, k = "name", 0
            elif c in b"lL":
                state = "l_colon"
            else:
                state = "skip"
        elif state in ("lf", "startws"):
            if state == "lf" and c == 0x0D:
                state = "lfcr"
            elif state == "lf" and c == 0x0A:
                return body_at(i + 1)
            elif c in b" \t":
                state = "skip" if has else "startws"
            elif c in b"Cc":
                state, k = ("skip", 0) if has else ("name", 0)
            elif c in b"lL":
                state = "skip" if has else "l_colon"
            elif c == 0x0A:  # startws only
                state = "lf"
            else:
                state = "skip"
        elif state == "lfcr":
            if c == 0x0A:
                return body_at(i + 1)
            state = "skip"
        elif state == "name":
            want = name[k]
            if c == 0x0A:
                state = "lf"
            elif (c | 0x20) == want or (want == 0x2D and c == 0x5F):  # "-" or "_"
                k += 1
                if k == len(name):
                    state = "l_colon"
            else:
                state = "skip"
        elif state == "l_colon":
            if c in b" \t":
                pass
            elif c == 0x3A:
                state = "value"
            elif c == 0x0A:
                state = "lf"
            else:
                state = "skip"
        elif state == "value":
            if c in b" \t":
                pass
            elif c in _DIGITS:
                state, clen = "digits", c - 0x30
            elif c == 0x0A:
                state = "lf"
            else:
                state = "skip"
        elif state == "digits":
            if c in _DIGITS:
                if clen >= _INT_MAX // 10:
                    return None  # "large Content-Length header value": error
                clen = clen * 10 + c - 0x30
            elif c in b"\r \t":
                state, has = "skip", True
            elif c == 0x0A:
                state, has = "lf", True
            else:
                state = "skip"  # "bad Content-Length header value": try another
        i += 1
    return None


def _pj_skip(data: bytes, i: int, end: int) -> int:
    """pj_scan_skip_whitespace with PJ_SCAN_AUTOSKIP_WS_HEADER: spaces, tabs, and a line end
    followed by whitespace (a header continuation)."""
    while i < end and data[i] in b" \t":
        i += 1
    if i < end and data[i] in b"\r\n":
        j = i
        if data[j] == 0x0D:
            j += 1
        if j < end and data[j] == 0x0A:
            j += 1
        if j < end and data[j] in b" \t":
            while j < end and data[j] in b" \t":
                j += 1
            return j
    return i


def pjsip(data: bytes) -> int | None:
    """pjsip `pjsip_find_msg` (pjsip/src/pjsip/sip_parser.c), what Asterisk's res_pjsip uses:
    the headers end at the first LF CR LF; a line (after any LF) starting `Content-Length`
    (any case, whitespace before the colon allowed) or `l` before space, tab or colon; the
    value may be folded onto the next line; the first valid one wins."""
    pos = data.find(b"\n\r\n")
    if pos < 0:
        return None
    hdr_end, body_start = pos + 1, pos + 3
    line = data.find(b"\n")
    while 0 <= line < hdr_end:
        line += 1
        first = data[line : line + 1]
        value: int | None = None
        if (first in (b"C", b"c") and data[line : line + 14].lower() == b"content-length") or (
            first in (b"l", b"L") and data[line + 1 : line + 2] in (b" ", b"\t", b":")
        ):
            i = line + (14 if first in (b"C", b"c") else 1)
            if i <= hdr_end:
                i = _pj_skip(data, i, hdr_end)
                if i < hdr_end and data[i] == 0x3A:
                    i = _pj_skip(data, i + 1, hdr_end)
                    j = i
                    while j < hdr_end and data[j] in _DIGITS:
                        j += 1
                    if j > i:
                        digits = data[i:j]
                        j = _pj_skip(data, j, hdr_end)
                        if j < hdr_end and data[j] in b"\r\n" and int(digits) <= _INT_MAX:
                            value = int(digits)
        if value is not None:
            return body_start + value
        line = data.find(b"\n", line)
    return None


_C_SPACE = b" \t\n\v\f\r"


def chan_sip(data: bytes, *, pedantic: bool = True) -> int | None:
    """Asterisk chan_sip `check_message_integrity` / `read_raw_content_length` (removed in
    Asterisk 21): the headers end at the first CRLF CRLF; the message is a C string (a NUL
    ends it); `strcasestr` for "\\nContent-Length:" first, then "\\nl:", anywhere; then
    `sscanf("%30d")`, which skips any whitespace (line ends too) and takes a sign. With
    `pedanticsipchecking` (the default) folded lines are joined first."""
    pos = data.find(b"\r\n\r\n")
    if pos < 0 or b"\x00" in data[:pos]:
        return None
    msg = data[: pos + 3]
    if pedantic:
        msg = re.sub(rb"\r?\n[ \t]+", b" ", msg)
    low = msg.lower()
    at = low.find(b"\ncontent-length:")
    if at >= 0:
        s = at + len(b"\ncontent-length:")
    else:
        at = low.find(b"\nl:")
        if at < 0:
            return None
        s = at + 3
    if b"\n" not in msg[s:]:
        return None
    while s < len(msg) and msg[s] in _C_SPACE:
        s += 1
    m = re.match(rb"[+-]?[0-9]+", msg[s : s + 30])
    if m is None:
        return None
    value = int(m[0])
    if value < 0 or value > _INT_MAX:
        return None
    return pos + 4 + value


_TOKEN = re.compile(rb"[A-Za-z0-9.!%*_+`'~-]*")


def _crlf(data: bytes, i: int) -> int:
    """sofia's CRLF_TEST: 2 for CR LF, 1 for a lone CR or LF, else 0."""
    c = data[i : i + 1]
    if c == b"\r":
        return 2 if data[i + 1 : i + 2] == b"\n" else 1
    return 1 if c == b"\n" else 0


def _non_crlf(data: bytes, i: int) -> int:
    j = i
    while j < len(data) and data[j] not in b"\r\n\x00":
        j += 1
    return j


def sofia(data: bytes) -> int | None:
    """sofia-sip `msg_extract` (libsofia-sip-ua/msg/msg_parser.c, msg_mclass.c,
    sip/sip_parser.c), what FreeSWITCH uses: header by header; CR LF, a lone LF or a lone CR
    ends a line, a line starting with whitespace continues the previous header (whitespace
    right after the start line is skipped), an empty line ends the headers; the name is a
    token compared whole (`Content-Length` or `l`, any case), whitespace and folding before
    the colon allowed; the value is digits only; a second Content-Length makes the message
    an error (it is a "single, critical" header)."""
    n = len(data)
    i = 0
    while i < n and data[i] in b" \t\r\n":
        i += 1
    end = _non_crlf(data, i)
    if end >= n:
        return None
    i = end + _crlf(data, end)
    while i < n and data[i] in b" \t":
        i += 1
    clen: int | None = None
    while True:
        if i >= n or data[i] == 0:
            return None
        if data[i] in b"\r\n":
            sep = i + _crlf(data, i)
            return sep + clen if clen is not None else None
        token = _TOKEN.match(data, i)
        assert token is not None
        name = token[0]
        j = token.end()
        is_length = name.lower() in (b"content-length", b"l")
        colon = False
        if data[j : j + 1] == b":":
            colon, j = True, j + 1
        elif data[j : j + 1] in (b" ", b"\t", b"\r", b"\n"):
            crlf = 0
            while True:
                j += crlf
                while j < n and data[j] in b" \t":
                    j += 1
                crlf = _crlf(data, j)
                if not (j + crlf < n and data[j + crlf] in b" \t"):
                    break
            if data[j : j + 1] == b":":
                colon, j = True, j + 1
        # the header runs to the next line end not followed by whitespace
        k = j
        while True:
            k = _non_crlf(data, k)
            if k >= n:
                return None
            crlf = _crlf(data, k)
            if k + crlf < n and data[k + crlf] in b" \t":
                k += crlf
                continue
            break
        value = data[j:k]
        i = k + crlf
        if not is_length:
            continue  # another header, or an error in one that is not critical
        if not colon:
            return None  # an error in a critical header: the message is an error
        if clen is not None:
            return None  # a second Content-Length
        text = value.strip(b" \t\r\n")
        m = re.match(rb"[0-9]+", text)
        if m is None or int(m[0]) > 2**32 - 1:
            return None
        rest = text[m.end() :]
        if rest and (rest[:1] not in b" \t\r\n" or rest.strip(b" \t\r\n")):
            return None
        clen = int(m[0])


SERVERS = {
    "kamailio/opensips": kamailio,
    "pjsip (asterisk)": pjsip,
    "chan_sip (asterisk)": chan_sip,
    "sofia-sip (freeswitch)": sofia,
}
