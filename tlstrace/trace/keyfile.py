"""Appending session keys to an NSS key-log file (the SSLKEYLOGFILE format Wireshark reads)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

log = logging.getLogger("tlstrace.trace")

_RETRY_AFTER = 30.0


class KeyLogFile:
    """Created with mode 0600; a write that fails (full or read-only disk) is counted and
    logged, never raised: the relay carries on and retries later."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.lines_written = 0
        self.errors = 0
        self._failed_at = 0.0

    def write(self, lines: list[str] | None) -> None:
        if not lines:
            return
        if self.fd is None and not self._open():
            return  # counted by _open
        assert self.fd is not None
        try:
            os.write(self.fd, ("\n".join(lines) + "\n").encode())
            self.lines_written += len(lines)
        except OSError as e:
            self._fail(f"cannot write to key-log file {self.path}: {e.strerror}")
            os.close(self.fd)
            self.fd = None

    def _open(self) -> bool:
        now = time.monotonic()
        if self._failed_at and now - self._failed_at < _RETRY_AFTER:
            self.errors += 1  # keys not written, waiting to retry
            return False
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if stat.S_ISREG(os.fstat(self.fd).st_mode):  # never chmod a device or a pipe
                os.fchmod(self.fd, 0o600)
        except OSError as e:
            self._fail(f"cannot open key-log file {self.path}: {e.strerror}")
            return False
        return True

    def _fail(self, message: str) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._failed_at > _RETRY_AFTER:
            log.error("%s; keys are not written (retrying in %.0f s)", message, _RETRY_AFTER)
        self._failed_at = now

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
