"""SIP message framing on a stream transport (RFC 3261 §18.3), sans-IO.

`SipFramer.feed(bytes)` returns events; it never touches a socket or a clock. Rules follow
OpenSIPS's TCP/TLS read path (`tcp_common.h`) where they make sense for a relay:

- Content-Length (or compact `l`) is required; missing, unparsable, negative or too large
  values are framing errors, after which the stream cannot be trusted.
- A header section that a SIP server behind tlstrace (Kamailio, OpenSIPS, Asterisk,
  FreeSWITCH) could take a different length from is an `ambiguous_length` error: more than one
  length header (even with equal values), `Content_Length` (Kamailio and OpenSIPS read it as
  Content-Length), a length header after leading whitespace (a folded line: Kamailio and
  OpenSIPS read it, the others do not), whitespace before its colon (Asterisk's chan_sip does
  not read it, the others do), a name that only starts like one (`Content-Lengthx`), or a
  length value continued on a folded line (pjsip, chan_sip and sofia-sip join it). The README
  (SIP framing) lists each rule with the server behaviour it comes from.
- A message (headers and body) larger than `max_msg_size` is an error.
- Between messages, `CRLFCRLF` is a keep-alive ping (RFC 5626) when `pingpong` is on: the
  caller answers it with a CRLF pong. Other whitespace between messages (a lone CRLF) is
  relayed as a `KeepAlive`, or dropped when `crlf_drop` is on.
- A message still incomplete after `max_chunks` fed chunks is an error (fragmentation attack).
- NUL bytes, bare CR or bare LF in the header section, or a start line that is neither a
  request nor a status line, are errors (unless `strict` is off: for a trusted SIP server's
  side, only the Content-Length is checked).

Bytes are never modified: each `Message.data` is exactly the bytes received.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

_strict_size: Callable[[bytes, int, int], int] | None
_lenient_size: Callable[[bytes, int, int], int] | None
try:  # the C fast path (setup.py builds it beside the mypyc modules; see _headscan.c)
    from tlstrace.sip._headscan import lenient_size as _lenient_size
    from tlstrace.sip._headscan import strict_size as _strict_size
except ImportError:  # not built (pure-Python install): `_check_head` does it all
    _strict_size = _lenient_size = None


class FramingErrorKind(StrEnum):
    MISSING_CONTENT_LENGTH = "missing_content_length"
    BAD_CONTENT_LENGTH = "bad_content_length"
    TOO_LARGE = "too_large"
    TOO_MANY_CHUNKS = "too_many_chunks"
    BAD_HEADER_BYTES = "bad_header_bytes"
    BAD_START_LINE = "bad_start_line"
    AMBIGUOUS_LENGTH = "ambiguous_length"


@dataclass(slots=True)
class Message:
    """One complete SIP message, headers and body, byte for byte. (Not frozen: it is made on
    the hot path, and a frozen dataclass's __init__ costs twice as much.)"""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A CRLFCRLF keep-alive ping; answer it with `PONG`."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Whitespace between messages (usually a lone CRLF) to relay as it is."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """Whitespace between messages dropped because `crlf_drop` is on."""

    size: int


@dataclass(frozen=True, slots=True)
class FramingError:
    """The stream broke a framing rule; nothing after this can be trusted."""

    kind: FramingErrorKind
    detail: str


Event = Message | Ping | KeepAlive | Dropped | FramingError

PONG = b"\r\n"
PING = Ping()
_PING_BYTES = b"\r\n\r\n"
#: first bytes of keep-alives (whitespace), which are not SIP messages
WHITESPACE = frozenset(b"\r\n \t")
_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
#: every header line any of the SIP servers tlstrace fronts could read as a length: after
#: leading whitespace, `Content-Length`, `Content_Length` or anything starting like them, or
#: `l` before whitespace, a colon or the end of the line; then the rest of the line and its
#: folded continuation lines, if any
_LENGTH_LINE = re.compile(
    rb"\r\n([ \t]*(?:content[-_]length|l(?=[ \t:\r]))[^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE
)
#: the one form of a length line every server reads the same way
_CANONICAL_LENGTH = re.compile(rb"(?:content-length|l):[ \t]*([0-9]{1,10})[ \t]*", re.IGNORECASE)
_BLANKS = b" \t"
#: Kamailio and OpenSIPS look for the length from a message's first byte: a start line
#: `l: 5 SIP/2.0` sets it for them, and the real length header is then ignored
_START_LENGTH = re.compile(rb"(?:content[-_]length|l)[ \t]*:", re.IGNORECASE)
_STATUS_PREFIX = b"SIP/2.0 "
_REQUEST_SUFFIX = b" SIP/2.0"


def _is_start_line(line: bytes) -> bool:
    """Case-insensitive fallback check of a start line (the fast path is exact case)."""
    return line.startswith(_STATUS_PREFIX) or line.endswith(_REQUEST_SUFFIX)


class SipFramer:
    """Splits one direction of a SIP stream into messages."""

    __slots__ = (
        "_chunks",
        "_held",
        "_held_size",
        "_need",
        "_tail",
        "crlf_drop",
        "dropped",
        "error",
        "max_chunks",
        "max_msg_size",
        "pingpong",
        "pings",
        "relayed",
        "strict",
    )

    def __init__(
        self,
        *,
        max_msg_size: int = 65535,
        pingpong: bool = True,
        crlf_drop: bool = False,
        max_chunks: int | None = 4,
        strict: bool = True,
    ) -> None:
        self.max_msg_size = max_msg_size
        self.strict = strict
        self.pingpong = pingpong
        self.crlf_drop = crlf_drop
        self.max_chunks = max_chunks
        #: the chunks of an incomplete message, joined once it can be whole (None: none held)
        self._held: list[bytes] | None = None
        self._held_size = 0
        #: the last 3 bytes held while the end of the headers is still to come (it may
        #: straddle two reads)
        self._tail = b""
        self._chunks = 0
        # total size of the message at the head of the buffer, once its headers are parsed
        self._need = 0
        #: `feed_into` counts here what `feed` returns as events: CRLFCRLF pings, whitespace
        #: runs relayed (KeepAlive) and dropped (Dropped); the caller reads and resets them
        self.pings = 0
        self.relayed = 0
        self.dropped = 0
        #: the error that made `feed_into` return -1
        self.error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back."""
        return self._held_size

    def feed(self, data: bytes) -> list[Event]:
        """Consume one chunk (one read, one TLS record) and return what it completed."""
        if self._held is None and data and data[0] not in WHITESPACE:
            # the common case, one whole message in one chunk: no slicing, no loop
            head_end = data.find(b"\r\n\r\n")
            if head_end > 0:
                size = self._parse_head(data, 0, head_end)
                if isinstance(size, FramingError):
                    self._reset()
                    return [size]
                if size == len(data):
                    self._chunks = 0
                    return [Message(data)]
                self._need = size  # _feed carries on from the parsed headers
        return self._feed(data)

    def feed_into(self, data: bytes, out: list[bytes]) -> int:
        """`feed` without an object per message: append each complete message and each relayed
        keep-alive (whitespace first) to `out`; count pings, relayed and dropped keep-alives in
        `pings`, `relayed` and `dropped`. Return the messages appended, or -1 after a framing
        error (in `error`; what came before it is in `out`)."""
        if self._held is None and data and data[0] not in WHITESPACE:
            # the common case, one whole message in one chunk: no slicing, no loop
            head_end = data.find(b"\r\n\r\n")
            if head_end > 0:
                size = self._parse_head(data, 0, head_end)
                if isinstance(size, FramingError):
                    self._reset()
                    self.error = size
                    return -1
                if size == len(data):
                    self._chunks = 0
                    out.append(data)
                    return 1
                self._need = size
        buf = data if self._held is None else self._gather(data)
        if isinstance(buf, int):
            return buf
        n = len(buf)
        need = self._need
        count = 0
        pos = 0
        while pos < n:
            if need:
                end = pos + need
                if end > n:
                    break
                out.append(buf[pos:end])
                count += 1
                pos = end
                need = 0
                self._chunks = 0
                continue
            if buf[pos] in WHITESPACE:
                pos = self._between_into(buf, pos, out)
                continue
            head_end = buf.find(b"\r\n\r\n", pos)
            if head_end < 0:
                if n - pos > self.max_msg_size:
                    self._reset()
                    self.error = FramingError(
                        FramingErrorKind.TOO_LARGE,
                        f"no end of headers within {self.max_msg_size} bytes",
                    )
                    return -1
                break
            need_or_error = self._parse_head(buf, pos, head_end)
            if isinstance(need_or_error, FramingError):
                self._reset()
                self.error = need_or_error
                return -1
            need = need_or_error
        self._need = need
        if pos < n:
            self._hold(buf[pos:])
            return self._incomplete_into(count)
        self._chunks = 0
        return count

    def _hold(self, rest: bytes) -> None:
        self._held = [rest]
        self._held_size = len(rest)
        self._tail = rest[-3:]

    def _gather(self, data: bytes) -> bytes | int:
        """What was held back and `data`, joined once the message at its head can be whole;
        while it cannot, what `feed_into` returns (0, or -1 after an error). Held chunks are not
        re-joined and rescanned per read: only the new bytes (and the 3 before them) are
        searched for the end of the headers, so a message trickled in `max_chunks` reads of
        any size costs linear time, not quadratic."""
        held = self._held
        assert held is not None
        held.append(data)
        self._held_size += len(data)
        if self._need:
            if self._held_size < self._need:
                return self._incomplete_into(0)  # the body is arriving
        else:
            tail = self._tail + data
            if tail.find(b"\r\n\r\n") < 0:
                if self._held_size > self.max_msg_size:
                    self._reset()
                    self.error = FramingError(
                        FramingErrorKind.TOO_LARGE,
                        f"no end of headers within {self.max_msg_size} bytes",
                    )
                    return -1
                self._tail = tail[-3:]
                return self._incomplete_into(0)
        buf = b"".join(held)
        self._held = None
        self._held_size = 0
        self._tail = b""
        return buf

    def _incomplete_into(self, count: int) -> int:
        self._chunks += 1
        if self.max_chunks is not None and self._chunks >= self.max_chunks:
            chunks = self._chunks
            self._reset()
            self.error = FramingError(
                FramingErrorKind.TOO_MANY_CHUNKS, f"message still incomplete after {chunks} reads"
            )
            return -1
        return count

    def _between_into(self, buf: bytes, pos: int, out: list[bytes]) -> int:
        end = pos + 1
        n = len(buf)
        while end < n and buf[end] in WHITESPACE:
            end += 1
        run = buf[pos:end]
        if self.pingpong and _PING_BYTES in run:
            self.pings += run.count(_PING_BYTES)
            run = run.replace(_PING_BYTES, b"")
        if run:
            if self.crlf_drop:
                self.dropped += 1
            else:
                out.append(run)
                self.relayed += 1
        return end

    def _feed(self, data: bytes) -> list[Event]:
        buf = data if self._held is None else self._gather(data)
        if isinstance(buf, int):
            return self._with_error([]) if buf < 0 else []
        n = len(buf)
        need = self._need
        events: list[Event] = []
        pos = 0
        while pos < n:
            if need:
                end = pos + need
                if end > n:
                    break
                events.append(Message(buf[pos:end]))
                pos = end
                need = 0
                self._chunks = 0
                continue
            if buf[pos] in WHITESPACE:
                pos = self._between_messages(buf, pos, events)
                continue
            head_end = buf.find(b"\r\n\r\n", pos)
            if head_end < 0:
                if n - pos > self.max_msg_size:
                    return self._error(
                        events,
                        FramingErrorKind.TOO_LARGE,
                        f"no end of headers within {self.max_msg_size} bytes",
                    )
                break
            need_or_error = self._parse_head(buf, pos, head_end)
            if isinstance(need_or_error, FramingError):
                events.append(need_or_error)
                self._reset()
                return events
            need = need_or_error
        self._need = need
        if pos < n:
            self._hold(buf[pos:])
            return self._incomplete(events)
        self._chunks = 0
        return events

    def _incomplete(self, events: list[Event]) -> list[Event]:
        return self._with_error(events) if self._incomplete_into(0) < 0 else events

    def _with_error(self, events: list[Event]) -> list[Event]:
        """`events` and the error `feed_into` would have returned -1 for."""
        assert self.error is not None
        events.append(self.error)
        return events

    def _between_messages(self, buf: bytes, pos: int, events: list[Event]) -> int:
        end = pos + 1
        n = len(buf)
        while end < n and buf[end] in WHITESPACE:
            end += 1
        run = buf[pos:end]
        if self.pingpong and _PING_BYTES in run:
            events.extend([PING] * run.count(_PING_BYTES))
            run = run.replace(_PING_BYTES, b"")
        if run:
            events.append(Dropped(len(run)) if self.crlf_drop else KeepAlive(run))
        return end

    def _parse_head(self, buf: bytes, pos: int, head_end: int) -> int | FramingError:
        """Validate the header section at buf[pos:head_end]; return the message size.

        The C fast path (`_headscan`, when built) answers the plain case in one pass; anything
        else, every error included, is judged and explained by `_check_head`."""
        fast = _strict_size if self.strict else _lenient_size
        if fast is not None:
            size = fast(buf, pos, head_end)
            if 0 <= size <= self.max_msg_size:
                return size
        return self._check_head(buf, pos, head_end)

    def _check_head(self, buf: bytes, pos: int, head_end: int) -> int | FramingError:
        """`_parse_head` in Python: every rule, and why a header section breaks one."""
        if not self.strict:
            return self._lenient_content_length(buf, pos, head_end)
        line_end = buf.find(b"\r\n", pos, head_end + 2)
        if not (
            buf.startswith(_STATUS_PREFIX, pos)
            or buf.endswith(_REQUEST_SUFFIX, pos, line_end)
            or _is_start_line(buf[pos:line_end].upper())
        ):
            return FramingError(
                FramingErrorKind.BAD_START_LINE,
                f"not a SIP request or status line: {buf[pos:line_end][:60]!r}",
            )
        if buf[pos] in b"cClL" and _START_LENGTH.match(buf, pos, line_end):
            return FramingError(
                FramingErrorKind.AMBIGUOUS_LENGTH,
                f"start line reads as a length header: {buf[pos:line_end][:60]!r}",
            )
        head = buf[pos:head_end]
        # every CR and LF must belong to a CRLF pair, and there must be no NUL
        if len(head) - len(head.translate(None, b"\x00\r\n")) != 2 * head.count(b"\r\n"):
            return FramingError(
                FramingErrorKind.BAD_HEADER_BYTES,
                "NUL byte, bare CR or bare LF in the header section",
            )
        return self._content_length(buf, pos, head_end)

    def _content_length(self, buf: bytes, pos: int, head_end: int) -> int | FramingError:
        """The message size from its only length header, which must be in the one form every
        server reads the same way (see the module docstring)."""
        lines = _LENGTH_LINE.findall(buf, pos, head_end + 2)
        if len(lines) == 1:
            m = _CANONICAL_LENGTH.fullmatch(lines[0])  # no CRLF in it: not folded
            if m is not None:
                size = head_end + 4 - pos + int(m[1])
                if size <= self.max_msg_size:
                    return size
                return FramingError(
                    FramingErrorKind.TOO_LARGE,
                    f"message of {size} bytes exceeds max_msg_size {self.max_msg_size}",
                )
        return _length_error(lines)

    def _lenient_content_length(self, buf: bytes, pos: int, head_end: int) -> int | FramingError:
        """The trusted SIP server's side: only the Content-Length value is checked."""
        values = _CONTENT_LENGTH.findall(buf, pos, head_end + 2)
        if not values:
            return FramingError(
                FramingErrorKind.MISSING_CONTENT_LENGTH,
                "no Content-Length header (required on stream transports)",
            )
        text = values[0].strip(b" \t")
        if (
            not text.isdigit()
            or len(text) > 10
            or (len(values) > 1 and any(v.strip(b" \t") != text for v in values))
        ):
            return FramingError(
                FramingErrorKind.BAD_CONTENT_LENGTH,
                f"Content-Length {b', '.join(values)[:40]!r} is not one number",
            )
        size = head_end + 4 - pos + int(text)
        if size > self.max_msg_size:
            return FramingError(
                FramingErrorKind.TOO_LARGE,
                f"message of {size} bytes exceeds max_msg_size {self.max_msg_size}",
            )
        return size

    def _error(self, events: list[Event], kind: FramingErrorKind, detail: str) -> list[Event]:
        events.append(FramingError(kind, detail))
        self._reset()
        return events

    def reset(self) -> None:
        """Forget a partial message (a framer fed one whole message at a time)."""
        self._reset()

    def _reset(self) -> None:
        self._held = None
        self._held_size = 0
        self._tail = b""
        self._need = 0
        self._chunks = 0


def _length_error(lines: list[bytes]) -> FramingError:
    """Why the length lines found are not exactly one in the canonical form."""
    if not lines:
        return FramingError(
            FramingErrorKind.MISSING_CONTENT_LENGTH,
            "no Content-Length header (required on stream transports)",
        )
    if len(lines) > 1:
        shown = b" | ".join(lines)[:80]
        return FramingError(
            FramingErrorKind.AMBIGUOUS_LENGTH, f"{len(lines)} length headers: {shown!r}"
        )
    line, folded = lines[0], b"\r\n" in lines[0]
    name_end = 1 if line.lstrip(_BLANKS)[:1] in (b"l", b"L") else 14
    name = line.lstrip(_BLANKS)[:name_end]
    rest = line.lstrip(_BLANKS)[name_end:]
    if line[:1] in (b" ", b"\t"):
        why = "after leading whitespace (a folded line)"
    elif name_end == 14 and name[7:8] != b"-":
        why = "not spelled Content-Length"
    elif folded:
        why = "continued on a folded line"
    elif rest[:1] != b":":
        why = (
            "whitespace before the colon"
            if rest.lstrip(_BLANKS)[:1] == b":"
            else "no colon right after the name"
        )
    else:
        text = rest[1:].strip(_BLANKS)
        return FramingError(
            FramingErrorKind.BAD_CONTENT_LENGTH, f"Content-Length {text[:40]!r} is not one number"
        )
    return FramingError(FramingErrorKind.AMBIGUOUS_LENGTH, f"length header {line[:60]!r}: {why}")
