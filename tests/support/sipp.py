"""SIPp (Debian package sip-tester) as a SIP client for tests: one process, one TCP connection
(`-t t1`), a number of calls; its own statistics say how many succeeded, failed, and how many
messages arrived that belonged to no call of its own."""

from __future__ import annotations

import csv
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port
from tests.support.procs import stop_group


def available() -> bool:
    return shutil.which("sipp") is not None


@dataclass(frozen=True)
class SippResult:
    returncode: int
    stats: dict[str, str]
    errors: str

    def count(self, column: str) -> int:
        return int(self.stats.get(column, "0") or 0)

    @property
    def successful(self) -> int:
        return self.count("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self.count("FailedCall(C)")

    @property
    def out_of_call(self) -> int:
        return self.count("OutOfCallMsgs(C)")

    @property
    def dead_call(self) -> int:
        return self.count("DeadCallMsgs(C)")


class Sipp:
    """`sipp` placing `calls` calls to `target_port` over one TCP connection."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        target_port: int,
        *,
        calls: int,
        rate: float = 10,
        scenario: str | Path = "uac",
        duration_ms: int = 200,
        recv_timeout_ms: int = 8000,
        global_timeout_s: int = 120,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.name = name
        self.stats_path = workdir / f"{name}-stats.csv"
        self.errors_path = workdir / f"{name}-errors.log"
        self.out_path = workdir / f"{name}.out"
        scen = ["-sn", scenario] if scenario == "uac" else ["-sf", str(scenario)]
        self.cmd = [
            "sipp",
            f"127.0.0.1:{target_port}",
            *scen,
            "-t",
            "t1",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "-s",
            name,
            "-m",
            str(calls),
            "-r",
            str(rate),
            "-l",
            str(max(1, calls)),
            "-d",
            str(duration_ms),
            "-recv_timeout",
            str(recv_timeout_ms),
            "-timeout",
            f"{global_timeout_s}s",
            "-nostdin",
            "-nd",
            "-trace_stat",
            "-stf",
            str(self.stats_path),
            "-fd",
            "1",
            "-trace_err",
            "-error_file",
            str(self.errors_path),
        ]
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=workdir,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.timeout = global_timeout_s + 30

    def wait(self) -> SippResult:
        try:
            rc = self.proc.wait(timeout=self.timeout)
        finally:
            stop_group(self.proc)
            self._out.close()
        rows: list[dict[str, str]] = []
        if self.stats_path.exists():
            with open(self.stats_path, newline="") as f:
                rows = list(csv.DictReader(f, delimiter=";"))
        errors = self.errors_path.read_text(errors="replace") if self.errors_path.exists() else ""
        return SippResult(rc, rows[-1] if rows else {}, errors)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")
