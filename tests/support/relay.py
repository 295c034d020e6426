"""Run the real `tlstrace run` in a subprocess for a test, with a generated TOML config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_port

TLSTRACE = [sys.executable, "-m", "tlstrace"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def to_toml(config: dict[str, Any]) -> str:
    """Enough TOML for our config: scalars, lists, and arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in config.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            tables.extend((key, v) for v in value)
        elif isinstance(value, dict):
            tables.append((f"__table__{key}", value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for key, table in tables:
        if key.startswith("__table__"):
            lines.append(f"\n[{key.removeprefix('__table__')}]")
        else:
            lines.append(f"\n[[{key}]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


class RelayProcess:
    """`tlstrace run --config FILE` as a child process; logs go to a file."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        args: list[str] | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "state_dir": str(workdir / "state"),
            "api_listen": f"127.0.0.1:{free_port()}",
            **config,
        }
        self.config = config
        self.config_path = workdir / "tlstrace.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = workdir / "tlstrace.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*TLSTRACE, "run", "--config", str(self.config_path), *(args or [])],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        if wait:
            self.wait_ready()

    @staticmethod
    def tls_listener(backend_port: int, **extra: Any) -> dict[str, Any]:
        port = free_port()
        return {
            "listen": f"tls:127.0.0.1:{port}",
            "backend": f"tcp:127.0.0.1:{backend_port}",
            **extra,
        }

    @property
    def api_url(self) -> str:
        return f"http://{self.config['api_listen']}"

    def port(self, index: int = 0) -> int:
        return int(str(self.config["listener"][index]["listen"]).rsplit(":", 1)[1])

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        addresses = [str(li["listen"]) for li in self.config.get("listener", [])]
        if self.config.get("api_listen"):
            addresses.append(f"tcp:{self.config['api_listen']}")
        for address in addresses:
            host, port = address.split(":", 1)[1].rsplit(":", 1)
            host = host.strip("[]")
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"tlstrace exited ({self.proc.returncode}):\n{self.log}")
                try:
                    wait_port(host, int(port), timeout=0.2)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"tlstrace not listening:\n{self.log}") from None

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the log:\n{self.log}")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
