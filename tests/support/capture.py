"""tshark capturing loopback traffic for a test, and reading it back with session keys."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class LoopbackCapture:
    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.errlog = path.with_suffix(".log")
        self._err = open(self.errlog, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(path), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while b"Capture started" not in self.errlog.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tshark did not start: {self.errlog.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        time.sleep(0.5)  # let the last segments in
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._err.close()


def decrypted_sip(pcap: Path, port: int, keylog: Path | None) -> list[tuple[str, str]]:
    """(Call-ID, method or status code) of every SIP message tshark can read in `pcap`."""
    args = [
        "tshark",
        "-r",
        str(pcap),
        "-d",
        f"tcp.port=={port},tls",
        "-d",
        f"tls.port=={port},sip",
        "-Y",
        "sip",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "sip.Call-ID",
        "-e",
        "sip.Method",
        "-e",
        "sip.Status-Code",
    ]
    if keylog is not None:
        args += ["-o", f"tls.keylog_file:{keylog}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = []
    for line in out.splitlines():
        cids, methods, codes = ([*line.split("|"), "", "", ""])[:3]
        # several SIP messages in one TLS record come out comma-separated
        for i, cid in enumerate(cids.split(",")):
            what = (methods.split(",") + [""] * 9)[i] or (codes.split(",") + [""] * 9)[i]
            rows.append((cid, what))
    return rows
