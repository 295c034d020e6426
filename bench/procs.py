"""Child processes of the benchmark: pinned to a core, in their own process group, always killed.

Every child is started in a new session (so its whole process group can be signalled), with
PR_SET_PDEATHSIG so the kernel kills it if the benchmark itself dies without cleaning up, and
pinned with sched_setaffinity (to the given cores, or to every core the benchmark could use
when it started: the benchmark pins itself to core 0 and children inherit that). `Procs` is
a context manager: leaving it (normally, on an exception, on Ctrl-C) sends SIGTERM to every
group still alive, then SIGKILL after a grace time.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: the cores this process may use when it starts (before the benchmark pins itself): what an
#: unpinned child gets back
ALL_CPUS = frozenset(os.sched_getaffinity(0))


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it);
    returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _child_setup(cpus: set[int] | None) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # unpinned: every core, whatever the benchmark process itself is pinned to
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus or ALL_CPUS)


class ProcessError(RuntimeError):
    pass


class Child:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


class Procs:
    """Starts children and guarantees they end."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: set[int] | None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        log = self.logdir / f"{name}.log"
        logf = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout if stdout is not None else logf,
                stderr=logf,
                start_new_session=True,
                env=env,
                preexec_fn=lambda: _child_setup(cpus),
            )
        finally:
            logf.close()
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 3.0) -> None:
        """SIGTERM to the child's group, SIGKILL after `grace` seconds."""
        p = child.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(grace)
        else:
            # the leader is gone; anything left in its group goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for f in (p.stdin, p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child, grace=2.0)

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # a second Ctrl-C during clean-up must not leave children behind
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, old)


# -- small helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(
    port: int, children: Sequence[Child], timeout: float = 20.0, count: int = 1
) -> None:
    """Wait until `count` sockets listen on 127.0.0.1:`port` (read from /proc/net/tcp rather
    than by connecting, so the relay under test sees no stray connection)."""
    deadline = time.monotonic() + timeout
    want = f":{port:04X}"
    while True:
        for c in children:
            if not c.alive():
                raise ProcessError(
                    f"{c.name} exited with {c.popen.returncode} before listening "
                    f"on {port}:\n{c.log_tail()}"
                )
        with open("/proc/net/tcp") as f:
            next(f)
            listening = 0
            for line in f:
                fields = line.split()
                if fields[1].endswith(want) and fields[3] == "0A":
                    listening += 1
            if listening >= count:
                return
        if time.monotonic() > deadline:
            raise ProcessError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
        time.sleep(0.05)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE // 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def core_busy() -> dict[str, float]:
    """Seconds each core spent running processes (user, nice, system), from /proc/stat."""
    out = {}
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                # user + nice + system: what processes were charged (not idle, iowait,
                # irq, softirq or steal; softirq time is not in any process's utime+stime)
                ticks = [int(v) for v in vals[:3]]
                out[name.decode()] = sum(ticks) / _TICK
    return out
