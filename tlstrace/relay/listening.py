"""Listening sockets that survive a failed accept.

uvloop closes a listening server for good when libuv reports an accept error (EMFILE or
ENFILE when the process or the system is out of file descriptors: `UVStreamServer._fatal_error`
on the listen callback's error status), and says nothing: the error is an OSError, which it
does not pass to the loop's exception handler. So tlstrace binds its listening sockets itself
and keeps a duplicate of each: when uvloop lets go of one, the kernel socket (and its accept
queue) stays, `stopped()` notices (the server's socket object reports fd -1), and `restart()`
serves the same socket again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

#: listening sockets a worker process inherited from its supervisor, by (host, port): taken
#: by `bind_listening` instead of binding anew
inherited: dict[tuple[str, int], socket.socket] = {}


def bind_listening(
    host: str, port: int, *, backlog: int, reuse_port: bool, listen: bool = True
) -> socket.socket:
    """A bound socket, listening unless `listen` is False (the server that serves it then
    listens: asyncio's and uvloop's `create_server` do)."""
    sock = inherited.pop((host, port), None)
    if sock is not None:
        return sock
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listening:
    """One listening socket served by the loop, restartable after uvloop dropped it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        backlog: int,
    ) -> None:
        self.loop = loop
        self.factory = factory
        self.backlog = backlog
        #: keeps the kernel socket open whatever uvloop does with its own descriptor
        self.keep = sock.dup()
        self.sock: socket.socket | None = sock
        self.server: asyncio.Server | None = None
        self.restarts = 0

    async def start(self) -> asyncio.Server:
        sock, self.sock = self.sock, None
        if sock is None:
            sock = self.keep.dup()
        self.server = await self.loop.create_server(self.factory, sock=sock, backlog=self.backlog)
        self.server.sockets  # noqa: B018 - caches the socket objects stopped() looks at
        return self.server

    def stopped(self) -> bool:
        """uvloop closed the server without being asked (a failed accept)."""
        server = self.server
        if server is None or not server.is_serving():
            return False
        return any(s is None or s.fileno() < 0 for s in server.sockets)

    async def restart(self) -> asyncio.Server:
        assert self.server is not None
        self.server.close()
        self.restarts += 1
        return await self.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.sock is not None:
            self.sock.close()
        self.keep.close()
