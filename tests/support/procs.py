"""Stopping the external programs the tests start (each in its own session/process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_group(
    proc: subprocess.Popen[bytes], grace: float = 5.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    """`sig` to the process's group, SIGKILL after `grace` seconds; then SIGKILL whatever is
    left in the group (there should be nothing). Safe to call on a process that has ended."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
