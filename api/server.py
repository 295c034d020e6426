"""uvicorn serving the API inside the sidecar's event loop, on a socket we bind ourselves (so a
bad address is a start-up error naming `api_listen`, and signals stay the sidecar's).

uvicorn alone keeps a connection that never sends a request open forever (its keep-alive
timeout starts after a first response) and accepts any number of them: each pins a file
descriptor the SIP listeners need. `GuardedH11Protocol` bounds the API: at most
`api_max_connections` at once, none while fewer than `fd_reserve` descriptors are free, and
each must send a complete request within `api_request_timeout` of its opening or of its
previous answer. Refusals and timeouts are counted and logged (at most once per 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from tlstrace.config import Config
from tlstrace.fds import FdReserve

#: periods of api_request_timeout an answer may take to be written (its client reading slowly)
_ANSWER_PERIODS = 6

log = logging.getLogger("tlstrace.api")


class ApiServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the sidecar owns SIGTERM/SIGINT/SIGHUP


class ApiCounters(Protocol):
    """Where the guard counts (the process's counters, exported as metrics)."""

    #: connections refused at accept, by reason (limit, fd_reserve)
    api_refused: Counter[str]
    #: connections closed for sending no complete request in time
    api_timeouts: int


class ApiGuard:
    """The API's connection limits, shared by its connections."""

    def __init__(self, config: Callable[[], Config], stats: ApiCounters) -> None:
        self.config = config
        self.stats = stats
        self.open = 0
        self.fds = FdReserve()
        self.logged: dict[str, float] = {}

    def refuse(self) -> str | None:
        """Why a new connection must be refused, if it must."""
        cfg = self.config()
        if self.open >= cfg.api_max_connections:
            return "limit"
        if not self.fds.free_at_least(cfg.fd_reserve):
            return "fd_reserve"
        return None

    def note(self, kind: str, text: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.logged.get(kind, 0.0) > 10:
            self.logged[kind] = now
            log.warning(text, *args)


class GuardedH11Protocol(H11Protocol):
    guard: ApiGuard  # set on the subclass make_server builds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = False
        self.deadline: asyncio.TimerHandle | None = None
        #: periods of api_request_timeout the answer being written has taken so far
        self.answering = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        why = guard.refuse()
        if why is not None:
            self.refused = True
            guard.stats.api_refused[why] += 1
            cfg = guard.config()
            if why == "limit":
                guard.note(
                    why,
                    "refusing API connections: api_max_connections (%d) reached",
                    cfg.api_max_connections,
                )
            else:
                guard.note(
                    why,
                    "refusing API connections: fewer than fd_reserve (%d) file descriptors free",
                    cfg.fd_reserve,
                )
            transport.abort()
            return
        guard.open += 1
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.guard.config().api_request_timeout, self._expired)

    def _expired(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.more_body
            and not cycle.response_complete
            and self.answering < _ANSWER_PERIODS
        ):
            # a complete request is being answered: its next one gets the time again (a
            # request whose body is still arriving is not complete and gets no more time; an
            # answer its client does not read gets a few periods)
            self.answering += 1
            self._arm()
            return
        self.guard.stats.api_timeouts += 1
        self.guard.note(
            "timeout",
            "closing API connections that sent no complete request "
            "within api_request_timeout (%g s)",
            self.guard.config().api_request_timeout,
        )
        self.transport.close()

    def on_response_complete(self) -> None:
        self.answering = 0
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if not self.refused:
            super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.guard.open -= 1
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        super().connection_lost(exc)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def make_server(app: FastAPI, guard: ApiGuard | None = None) -> ApiServer:
    protocol: type[H11Protocol] = H11Protocol
    timeout = 5.0
    if guard is not None:
        protocol = type("ApiProtocol", (GuardedH11Protocol,), {"guard": guard})
        timeout = guard.config().api_request_timeout
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="none",
        server_header=False,
        http=protocol,
        timeout_keep_alive=max(1, int(timeout)),
        h11_max_incomplete_event_size=16 * 1024,
        # uvicorn's records go to tlstrace's handler, in its log_format
        log_config=None,
    )
    return ApiServer(config)
