"""A SIP message read from one WebSocket message, made fit for a stream transport.

Over WebSocket the message boundary is the WebSocket message, and RFC 7118 lets a client leave
Content-Length out. Towards a TCP or TLS backend the stream needs one: when it is missing it is
added (the only change tlstrace makes to a message). A message with a length header is relayed
as it is, and only when that header is the one every SIP server reads the same way and it
covers the whole message (tlstrace/sip/framing.py's strict rules): a length that disagrees with
the WebSocket message would let a client smuggle a second message to the backend."""

from __future__ import annotations

from tlstrace.sip.framing import WHITESPACE, FramingError, FramingErrorKind, SipFramer

CONTENT_LENGTH = b"\r\nContent-Length: %d"


class StreamForm:
    """Checks each message and adds Content-Length where it is missing."""

    __slots__ = ("added", "framer")

    def __init__(self, max_msg_size: int) -> None:
        self.framer = SipFramer(
            max_msg_size=max_msg_size, pingpong=False, crlf_drop=False, max_chunks=None
        )
        #: messages that had a Content-Length added
        self.added = 0

    def convert(self, data: bytes) -> bytes | FramingError:
        """`data` framed for a stream (the same object when it already is), or why not."""
        if data[0] in WHITESPACE:
            return FramingError(FramingErrorKind.BAD_START_LINE, "whitespace before the start line")
        if b"\r\n\r\n" not in data:
            return FramingError(FramingErrorKind.BAD_HEADER_BYTES, "no end of the header section")
        framer = self.framer
        out: list[bytes] = []
        n = framer.feed_into(data, out)
        if n == 1 and not framer.buffered and len(out) == 1:
            return data  # the common case: a Content-Length that matches
        framer.reset()
        error = framer.error
        framer.error = None
        if n < 0 and error is not None and error.kind is FramingErrorKind.MISSING_CONTENT_LENGTH:
            head_end = data.find(b"\r\n\r\n")
            body = len(data) - head_end - 4
            fixed = data[:head_end] + CONTENT_LENGTH % body + data[head_end:]
            out = []
            if framer.feed_into(fixed, out) == 1 and not framer.buffered and len(out) == 1:
                self.added += 1
                return fixed
            framer.reset()
            error, framer.error = framer.error, None
        if error is not None:
            return error
        if n < 0 or not out:
            return FramingError(
                FramingErrorKind.BAD_CONTENT_LENGTH,
                "Content-Length larger than the WebSocket message",
            )
        return FramingError(
            FramingErrorKind.BAD_CONTENT_LENGTH,
            "Content-Length smaller than the WebSocket message (a second message after it)",
        )
