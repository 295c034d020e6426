"""The supervisor's line to one worker: a Unix socket pair carrying pickled frames.

A frame is a 4-byte big-endian length and a pickle. The supervisor sends calls
`(seq, method, args)`; the worker answers `(seq, ok, value)`, where `value` is the result or,
when not ok, the exception. Frames with seq 0 are notices the worker sends unasked
(`(0, kind, value)`). Everything crossing is the control seam's plain data
(`tlstrace.control`), picklable by construction.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

_LEN = struct.Struct("!I")
#: the largest frame accepted (a connection list of 10,000 entries is about 4 MB)
MAX_FRAME = 256 << 20


class ChannelClosed(Exception):
    """The other end is gone (the worker died or stopped)."""


class BadFrame(Exception):
    """The other end sent what is no frame (too large, or not a pickle of a frame)."""


async def read_frame(reader: asyncio.StreamReader) -> Any:
    try:
        head = await reader.readexactly(_LEN.size)
        (n,) = _LEN.unpack(head)
        if n > MAX_FRAME:
            raise BadFrame(f"frame of {n} bytes")
        return pickle.loads(await reader.readexactly(n))
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise ChannelClosed(str(e) or "closed") from None


def frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


async def open_channel(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(sock=sock, limit=1 << 20)


class Caller:
    """The supervisor's end: `call` sends a call and waits for its answer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        notice: Callable[[str, Any], None],
        broken: Callable[[str], None] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.notice = notice
        #: called (once, then the channel closes) with what was wrong when the other end sent
        #: something that is no frame, or a notice failed: the supervisor replaces the worker
        self.broken = broken
        self.seq = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def call(self, method: str, *args: Any, timeout: float = 10.0) -> Any:
        if self.closed:
            raise ChannelClosed("closed")
        seq = next(self.seq)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        try:
            self.writer.write(frame((seq, method, args)))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(seq, None)

    async def _read(self) -> None:
        try:
            while True:
                seq, ok, value = await read_frame(self.reader)
                if seq == 0:
                    self.notice(ok, value)
                    continue
                fut = self.pending.get(seq)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except ChannelClosed:
            pass
        except Exception as e:  # garbage on the pipe: the channel cannot be trusted any more
            if self.broken is not None:
                self.broken(f"{type(e).__name__}: {e}")
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed("the worker is gone"))
        self.pending.clear()
        self.writer.close()


Handler = Callable[..., Awaitable[Any]]


async def answer_calls(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handlers: dict[str, Handler]
) -> None:
    """The worker's end: answer each call (concurrently) until the supervisor goes away."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(seq: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            handler = handlers.get(method)
            if handler is None:
                raise LookupError(f"no call named {method!r}")
            reply = (seq, True, await handler(*args))
        except Exception as e:  # the caller gets it
            reply = (seq, False, _portable(e))
        try:
            data = frame(reply)
        except Exception as e:  # a result that does not pickle
            data = frame((seq, False, RuntimeError(f"{type(e).__name__}: {e}")))
        writer.write(data)

    while True:
        try:
            seq, method, args = await read_frame(reader)
        except ChannelClosed:
            return
        except Exception:  # garbage from the supervisor: as if it were gone
            return
        task = loop.create_task(one(seq, method, args))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _portable(e: Exception) -> Exception:
    """`e` if it survives pickling both ways (an exception whose __init__ takes other
    arguments than it passes to Exception does not unpickle), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
    return e


def notify(writer: asyncio.StreamWriter, kind: str, value: Any) -> None:
    """A notice to the supervisor (seq 0)."""
    if not writer.is_closing():
        writer.write(frame((0, kind, value)))
