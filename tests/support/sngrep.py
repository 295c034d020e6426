"""sngrep as an independent HEP receiver: its UDP HEP listener, headless, writing the SIP it
decapsulates to a pcap file (hep.md §5B). It enforces the HEP auth key (`eep.listen.pass`).

    with SngrepHep(tmp_path, auth_key="s3cret") as sng:
        send HEP to ("127.0.0.1", sng.port)
        sng.drain()                       # sngrep has read every datagram
    frames = sng.frames()                 # after stop: what it wrote, one per kept message

sngrep only listens on IPv4 and writes IPv6 HEP as 0.0.0.0 addresses.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.net import free_port
from tests.support.procs import stop_group


@dataclass(frozen=True)
class Frame:
    ts_sec: int
    ts_usec: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    payload: bytes


def read_pcap_udp(path: Path) -> list[Frame]:
    """The Ethernet/IPv4/UDP frames of a classic pcap file (what sngrep writes)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, f"linktype {linktype}, expected Ethernet"
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack(endian + "IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        udp = ip[ihl:total]
        sport, dport = struct.unpack("!HH", udp[:4])
        out.append(
            Frame(
                sec,
                usec,
                socket.inet_ntoa(ip[12:16]),
                sport,
                socket.inet_ntoa(ip[16:20]),
                dport,
                bytes(udp[8:]),
            )
        )
    return out


def _rx_queue(port: int) -> int | None:
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:port."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want:
                return int(fields[4].split(":")[1], 16)
    return None


class SngrepHep:
    """`sngrep -N -q -F -f CONF -L udp:127.0.0.1:PORT -O FILE` in its own process group."""

    def __init__(
        self, root: Path, *, auth_key: str | None = None, max_lifetime: float = 120.0
    ) -> None:
        self.root = root
        self.auth_key = auth_key
        self.max_lifetime = max_lifetime
        self.port = 0
        self.pcap = root / "sngrep-out.pcap"
        self.log = root / "sngrep.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SngrepHep:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "sngrep.conf"
        conf.write_text(f"set eep.listen.pass {self.auth_key}\n" if self.auth_key else "")
        self.port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
        cmd = [
            "timeout",
            "-s",
            "TERM",
            "-k",
            "5",
            str(int(self.max_lifetime)),
            "sngrep",
            "-N",
            "-q",
            "-F",
            "-f",
            str(conf),
            "-L",
            f"udp:127.0.0.1:{self.port}",
            "-O",
            str(self.pcap),
        ]
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout
        while _rx_queue(self.port) is None:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sngrep did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def drain(self, timeout: float = 10.0, settle: float = 0.3) -> None:
        """Wait until sngrep has read every datagram sent to it, then `settle` seconds for it
        to process the last one."""
        deadline = time.monotonic() + timeout
        while (_rx_queue(self.port) or 0) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("sngrep does not read its socket")
            time.sleep(0.02)
        time.sleep(settle)

    def stop(self) -> None:
        """SIGTERM (sngrep flushes its pcap and exits), SIGKILL after 5 s; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_group(proc)

    def frames(self) -> list[Frame]:
        """What sngrep wrote (call after `stop()`)."""
        return read_pcap_udp(self.pcap) if self.pcap.exists() else []
