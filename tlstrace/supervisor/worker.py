"""One relay worker (`python -m tlstrace.supervisor.worker FD`): a whole `Sidecar` without an
API, serving the listening sockets it inherited from the supervisor, and answering the
supervisor's calls on the channel it was given (descriptor FD).

The supervisor sends a `WorkerBoot` first; the worker answers the `ready` notice once it
listens (or `failed` with the reason), then the calls of `WorkersControl`. When the channel
closes (the supervisor is gone) the worker shuts down as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from typing import cast

import uvloop

from tlstrace.app import Sidecar, StartupError, raise_fd_limit
from tlstrace.config import Config, ConfigError
from tlstrace.control import Direction
from tlstrace.feed import QUEUE_SIZE, Viewer
from tlstrace.logs import setup_logging
from tlstrace.relay import listening
from tlstrace.relay.connection import set_worker
from tlstrace.supervisor.boot import TraceWanted, WorkerBoot, view_row
from tlstrace.supervisor.channel import Handler, answer_calls, notify, open_channel, read_frame
from tlstrace.trace.filters import TraceFilter

log = logging.getLogger("tlstrace")


#: bytes waiting to go to the supervisor above which events for its feed are dropped (it
#: reads slower than they come): counted as the feed's drops, as for a slow viewer
FORWARD_BACKLOG = 4 << 20


class _Forward:
    """The queue of the viewer that stands for the supervisor's feed: each event goes to the
    supervisor at once; it counts as full while the channel holds FORWARD_BACKLOG bytes."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def __len__(self) -> int:
        if self.writer.transport.get_write_buffer_size() >= FORWARD_BACKLOG:
            return QUEUE_SIZE
        return 0

    def append(self, data: str) -> None:
        notify(self.writer, "event", data)

    def clear(self) -> None:
        pass


class _WorkerTag(logging.Filter):
    """Names the worker on each line: `tlstrace[worker 1]`, and a `worker` field in JSON."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker"):
            record.worker = self.index
            record.name = f"{record.name}[worker {self.index}]"
        return True


def apply_trace(sidecar: Sidecar, wanted: TraceWanted) -> None:
    """Put the wanted tracing state in force (a no-op when it already is)."""
    tracing, timer = sidecar.tracing, sidecar.trace_timer
    on = wanted.on and bool(len(sidecar.senders))
    seconds = None if wanted.until is None else wanted.until - time.time()
    if on and seconds is not None and seconds <= 0:
        on = False
    if tracing.enabled == on and (not on or timer.until == wanted.until):
        return
    timer.switch(on, seconds if on else None, wanted.by)


async def _run(sock: socket.socket) -> int:
    reader, writer = await open_channel(sock)
    boot: WorkerBoot = await read_frame(reader)
    config = boot.config
    setup_logging(config.log_level, config.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(boot.index))
    set_worker(boot.index, boot.generation)
    for address, fd in boot.listeners.items():
        listening.inherited[address] = socket.socket(fileno=fd)
    try:
        sidecar = Sidecar(
            config, boot.config_path, boot.overrides, serve_api=False, watch_config=False
        )
        await sidecar.start()
    except (ConfigError, StartupError) as e:
        log.error("cannot start: %s", e)
        notify(writer, "failed", str(e))
        await writer.drain()
        return 2
    if boot.rules is not None:
        sidecar.tracing.set_filter(TraceFilter(boot.rules.rules, boot.rules.default))
    if boot.trace is not None:
        apply_trace(sidecar, boot.trace)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: sidecar.relay.spawn(sidecar.shutdown()))
    loop.add_signal_handler(signal.SIGHUP, sidecar.request_reload)
    control = sidecar.control

    async def config_() -> Config:
        return sidecar.config

    forwarder = Viewer()
    forwarder.queue = cast("deque[str]", _Forward(writer))

    async def heartbeat(viewers: bool) -> int:
        """The open connections; `viewers`: the supervisor's feed has viewers, send it the
        events."""
        if viewers and not sidecar.relay.shutting_down:
            sidecar.feed.viewers.add(forwarder)
        else:
            sidecar.feed.viewers.discard(forwarder)
        return len(sidecar.relay.connections)

    async def want_trace(wanted: TraceWanted) -> None:
        apply_trace(sidecar, wanted)

    async def connection_rows(
        direction: Direction | None, traced: bool | None, limit: int
    ) -> list[tuple[object, ...]]:
        """`connections` as rows (`boot.view_row`): a third cheaper to pickle and unpickle
        than the dataclasses, which counts with 10,000 connections."""
        return [view_row(v) for v in await control.connections(direction, traced, limit)]

    handlers: dict[str, Handler] = {
        "config": config_,
        "heartbeat": heartbeat,
        "want_trace": want_trace,
        "connection_rows": connection_rows,
        **{
            name: getattr(control, name)
            for name in (
                "trace_state",
                "switch_tracing",
                "trace_filter",
                "set_trace_filter",
                "connections",
                "connection",
                "close_connection",
                "destinations",
                "reload",
                "readiness",
                "counters",
            )
        },
    }
    notify(writer, "ready", os.getpid())
    calls = loop.create_task(answer_calls(reader, writer, handlers))
    stopped = loop.create_task(sidecar.stopped.wait())
    await asyncio.wait({calls, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not stopped.done():
        log.warning("the supervisor is gone: shutting down")
        await sidecar.shutdown()
    calls.cancel()
    writer.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    raise_fd_limit()
    return uvloop.run(_run(sock))


if __name__ == "__main__":
    sys.exit(main())
