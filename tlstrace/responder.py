"""A minimal, fast SIP responder over TCP, for the benchmark, the tests and `tlstrace demo`.

`respond(request)` is sans-IO: it turns one complete SIP message into the bytes to send back,
or None. Requests get a `200 OK` that copies Via (every one, in order), From, To (with a tag
added when it has none), Call-ID and CSeq, with `Content-Length: 0`. ACK gets nothing, and
responses received are ignored. Nothing is validated beyond what building the answer needs:
framing (and its checks) is `SipFramer`'s job.

`serve(host, port)` runs it as an asyncio server (works under uvloop): one `SipFramer` per
connection, the answers to everything one read completed written at once.

    python -m tlstrace.responder --listen 127.0.0.1:5060
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import zlib
from collections.abc import Sequence
from typing import cast

from tlstrace.sip.framing import FramingError, Message, SipFramer

#: Header names (compact forms included, lower case and as usually spelled) copied into the
#: response, mapped to the name written; Via keeps its order and every occurrence.
_COPIED = {
    b"via": b"Via",
    b"v": b"Via",
    b"from": b"From",
    b"f": b"From",
    b"to": b"To",
    b"t": b"To",
    b"call-id": b"Call-ID",
    b"i": b"Call-ID",
    b"cseq": b"CSeq",
}
_COPIED.update({v: v for v in _COPIED.values()})
#: One copied header line (and its folded continuation lines), found in one C-level scan: a
#: Python loop over every header line costs several times more.
_HEADER = re.compile(
    rb"\r\n(via|from|to|call-id|cseq|[vfti])[ \t]*:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
_FOLD = re.compile(rb"[ \t]*\r\n[ \t]+")
_STATUS_LINE = b"SIP/2.0 200 OK\r\n"
_TRAILER = b"Server: tlstrace-responder\r\nContent-Length: 0\r\n\r\n"
_TAG_PARAM = b";tag="


def to_tag(call_id: bytes) -> bytes:
    """The To tag given to a dialog: stable for a Call-ID, so retransmissions match."""
    return b"%08x" % zlib.crc32(call_id)


def _has_tag(value: bytes) -> bool:
    # a tag parameter sits after the name-addr ("<...>") when there is one
    close = value.rfind(b">")
    params = value[close + 1 :] if close >= 0 else value
    return _TAG_PARAM in params.lower().replace(b" ", b"")


def respond(request: bytes) -> bytes | None:
    """The response to one complete SIP message, or None (ACK, a response, not a request)."""
    if request.startswith(b"SIP/"):
        return None
    line_end = request.find(b"\r\n")
    if line_end < 0:
        return None
    method = request[: request.find(b" ", 0, line_end)]
    if not method or method == b"ACK" or not request.endswith(b" SIP/2.0", 0, line_end):
        return None
    head_end = request.find(b"\r\n\r\n")
    if head_end < 0:
        head_end = len(request)
    out = [_STATUS_LINE]
    call_id = b""
    to_value: bytes | None = None
    to_pos = -1
    for raw_name, raw_value in _HEADER.findall(request, line_end, head_end + 2):
        name = _COPIED.get(raw_name) or _COPIED[raw_name.lower()]
        value = raw_value.rstrip(b" \t")
        if b"\r\n" in value:
            value = _FOLD.sub(b" ", value)
        if name == b"To":
            if to_value is not None:  # a second To: keep the first
                continue
            to_value = value
            to_pos = len(out)
        elif name == b"Call-ID":
            call_id = value
        out.append(name + b": " + value + b"\r\n")
    if to_value is not None and not _has_tag(to_value):
        out[to_pos] = b"To: " + to_value + _TAG_PARAM + to_tag(call_id) + b"\r\n"
    out.append(_TRAILER)
    return b"".join(out)


_MEMO: dict[bytes, bytes | None] = {}
_MEMO_MAX = 4096


def respond_cached(request: bytes) -> bytes | None:
    """`respond`, remembered for the last few thousand distinct requests. Load generators
    repeat their requests; hashing one costs a tenth of answering it, and the responder shares
    a core with the load generator in the benchmark."""
    try:
        return _MEMO[request]
    except KeyError:
        pass
    answer = respond(request)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[request] = answer
    return answer


class ResponderProtocol(asyncio.Protocol):
    """One TCP connection of the responder."""

    __slots__ = ("framer", "transport")

    def __init__(self) -> None:
        self.framer = SipFramer(
            max_msg_size=1 << 20, pingpong=False, crlf_drop=True, max_chunks=None
        )
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answers = []
        for ev in self.framer.feed(data):
            if ev.__class__ is Message:
                answer = respond_cached(ev.data)
                if answer is not None:
                    answers.append(answer)
            elif isinstance(ev, FramingError):
                if answers and self.transport is not None:
                    self.transport.write(b"".join(answers))
                if self.transport is not None:
                    self.transport.close()
                return
        if answers and self.transport is not None:
            self.transport.write(answers[0] if len(answers) == 1 else b"".join(answers))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(
    host: str, port: int, *, backlog: int = 4096, reuse_port: bool = False
) -> asyncio.Server:
    """Start the responder on host:port (port 0: any free port; see `server.sockets`)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        ResponderProtocol,
        host,
        port,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    addr = server.sockets[0].getsockname()
    print(f"tlstrace responder listening on {addr[0]}:{addr[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tlstrace.responder",
        description="Answer every SIP request over TCP with 200 OK.",
    )
    p.add_argument(
        "--listen",
        type=_parse_hostport,
        default=("127.0.0.1", 5060),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:5060)",
    )
    args = p.parse_args(argv)
    host, port = args.listen
    try:
        import uvloop

        uvloop.run(_main(host, port))
    except OSError as e:
        print(f"responder: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
