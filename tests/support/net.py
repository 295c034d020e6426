"""Loopback ports and small socket helpers for tests."""

from __future__ import annotations

import socket
import time

#: ports free_port handed out in this process: the kernel may offer a port just released again,
#: and two addresses of one configuration (a listener and api_listen) must differ
_handed_out: set[int] = set()


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on loopback for `kind` right now, and that this process was not
    given before."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    for _ in range(1000):
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no loopback port left that was not handed out before")


def _proc_address(family: int, host: str) -> str:
    """`host` as /proc/net/udp{,6} writes it: 32-bit words in host (little-endian) order."""
    raw = socket.inet_pton(family, host)
    return "".join(raw[i : i + 4][::-1].hex() for i in range(0, len(raw), 4)).upper()


def udp_bound(host: str, port: int) -> bool:
    """Whether a UDP socket is bound to host:port (or to the wildcard address on `port`), read
    from /proc: probing by binding the port ourselves would take it from the server that is
    about to bind it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    table = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    wanted = {
        _proc_address(family, host),
        _proc_address(family, "::" if ":" in host else "0.0.0.0"),
    }
    with open(table) as f:
        next(f)
        for line in f:
            address, _, hexport = line.split()[1].partition(":")
            if int(hexport, 16) == port and address in wanted:
                return True
    return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)
