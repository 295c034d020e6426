"""The addresses of a listener's connections, shared where they can be. Plain Python on purpose
(not compiled with the relay's hot modules): compiled code would unbox each tuple and box a new
one."""

from __future__ import annotations

import sys
from typing import Any

from tlstrace.relay.connection import Connection


class SharedAddresses:
    """Sets the addresses of a listener's connections so that they share what they can: the
    local address tuple of the last one (the next has the same, nearly always) and the
    client's address text (clients behind one NAT or SBC, a phone's reconnections), interned.
    Plain Python on purpose: compiled code would unbox each tuple and box a new one."""

    __slots__ = ("_local",)

    def __init__(self) -> None:
        self._local: tuple[str, int] = ("", 0)

    def note(self, conn: Connection, peername: tuple[Any, ...], sockname: tuple[Any, ...]) -> None:
        """`conn`'s remote and local addresses from its transport's peername and sockname."""
        conn.remote = (sys.intern(peername[0]), peername[1])
        local = self._local
        if sockname[1] != local[1] or sockname[0] != local[0]:
            local = self._local = (sys.intern(sockname[0]), sockname[1])
        conn.local = local
