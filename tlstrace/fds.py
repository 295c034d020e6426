"""File descriptors: how many the process may open, how many it has open, and whether some
number of them is still free (Linux).

Counting the open ones lists /proc/self/fd, which costs about 6 µs per descriptor (57 ms with
10,000 open): fine for a log line, not for a check that runs often. Whether `n` are free is
answered by duplicating a descriptor `n` times and closing the copies again.
"""

from __future__ import annotations

import errno
import os
import resource
import time

_FD_DIRS = ("/proc/self/fd", "/dev/fd")
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
_probe: int | None = None


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds() -> int:
    """Descriptors open now (without the one used to count them); slow with many open. When
    none is free to count them, that is the answer (the limit)."""
    for path in _FD_DIRS:
        try:
            return len(os.listdir(path)) - 1
        except OSError as e:
            if e.errno in _OUT_OF_FDS:
                return fd_limit()
            continue
    return 0


def prepare() -> None:
    """Open the descriptor `free_at_least` duplicates (at start-up, so that the process's
    descriptor count at rest includes it)."""
    global _probe
    if _probe is None:
        _probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def free_at_least(n: int) -> bool:
    """Whether `n` more descriptors could be opened right now."""
    if n <= 0:
        return True
    copies: list[int] = []
    try:
        prepare()
        assert _probe is not None
        copies.append(_probe)  # the probe itself is not one of the n
        for _ in range(n):
            copies.append(os.dup(_probe))
        return True
    except OSError as e:
        if e.errno in _OUT_OF_FDS:
            return False
        raise
    finally:
        for fd in copies[1:]:
            os.close(fd)


class FdReserve:
    """`free_at_least(n)`, answered again at most every `max_age` seconds (a flood of
    connections must not be able to multiply its cost)."""

    def __init__(self, max_age: float = 0.25) -> None:
        self.max_age = max_age
        self._at = -max_age
        self._n = -1
        self._ok = True

    def free_at_least(self, n: int) -> bool:
        now = time.monotonic()
        if n != self._n or now - self._at > self.max_age:
            self._ok = free_at_least(n)
            self._at, self._n = now, n
        return self._ok
