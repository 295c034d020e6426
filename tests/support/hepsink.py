"""A UDP socket that keeps every HEP datagram it receives, for tests."""

from __future__ import annotations

import socket
import threading
import time

from hep.codec import HepPacket, decode


class HepSink:
    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def hep_id(self) -> str:
        return f"[sink]127.0.0.1:{self.port};transport=udp"

    def _run(self) -> None:
        while not self._stop:
            try:
                self.datagrams.append(self.sock.recv(70000))
            except (TimeoutError, OSError):
                continue

    def packets(self, proto_type: int | None = None) -> list[HepPacket]:
        out = [decode(d) for d in list(self.datagrams)]
        return [p for p in out if proto_type is None or p.proto_type == proto_type]

    def wait(
        self, count: int, proto_type: int | None = None, timeout: float = 10.0
    ) -> list[HepPacket]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.packets(proto_type)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} of {count} HEP packets (type {proto_type})")
            time.sleep(0.02)

    def settle(self, quiet: float = 0.5) -> None:
        """Wait until nothing has arrived for `quiet` seconds."""
        n = -1
        while n != len(self.datagrams):
            n = len(self.datagrams)
            time.sleep(quiet)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()

    def __enter__(self) -> HepSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
