"""File descriptors: how many the process may open and how many it has open (Linux)."""

from __future__ import annotations

import errno
import os
import resource
import time

_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds() -> int:
    """Descriptors open now (without the one used to count them). Counting needs one
    descriptor: when none is free, that is the answer (the limit)."""
    for path in _FD_DIRS:
        try:
            return len(os.listdir(path)) - 1
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                return fd_limit()
            continue
    return 0


class FdGauge:
    """Free descriptors, counted at most every `max_age` seconds (counting lists them all:
    a cost that a flood of connections must not be able to multiply)."""

    def __init__(self, max_age: float = 0.25) -> None:
        self.max_age = max_age
        self._at = 0.0
        self._free = 0

    def free(self) -> int:
        now = time.monotonic()
        if now - self._at > self.max_age:
            self._free = fd_limit() - open_fds()
            self._at = now
        return self._free

    def took(self, n: int = 1) -> None:
        """`n` descriptors were opened since the last count."""
        self._free -= n
