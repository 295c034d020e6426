"""`tlstrace demo` shows the whole loop: relay, backend, HEP listener, calls over TLS 1.2/1.3."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def demo_env(tmp: Path) -> dict[str, str]:
    """The demo's temporary directory goes under `tmp` (tempfile honours TMPDIR)."""
    return {**os.environ, "TMPDIR": str(tmp)}


def test_demo_shows_the_whole_loop(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tlstrace", "demo", "--keep"],
        capture_output=True,
        text=True,
        timeout=60,
        env=demo_env(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "call 1 over TLSv1.2" in out and "call 2 over TLSv1.3" in out
    assert out.count("ACCEPTED SUCCESS") == 2 and out.count("CLOSED SUCCESS") == 2
    assert out.count("INVITE sip:bob@example.com SIP/2.0") >= 3  # twice traced, once in full
    assert "| Call-ID: demo-1@tlstrace" in out  # the decrypted SIP, line by line
    assert "TLS session of call demo-2@tlstrace: TLSv1.3" in out
    keylog = Path(re.search(r"key-log lines in (\S+) \(mode 0600\)", out).group(1))  # type: ignore[union-attr]
    assert keylog.parent.parent == tmp_path  # kept (--keep), where the output said
    assert f"Kept {keylog.parent} " in out and f"tls.keylog_file:{keylog}" in out
    assert keylog.stat().st_mode & 0o777 == 0o600
    assert len(keylog.read_text().splitlines()) == 6  # 1 line for TLS 1.2, 5 for TLS 1.3
    assert "\033[" not in out  # no colours when not on a terminal
    assert r.stderr == ""


def files_line(line: str) -> Path | None:
    m = re.match(r"\s+files\s+(\S+): ", line)
    return Path(m[1]) if m else None


def test_demo_says_where_its_files_are_and_removes_them(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlstrace", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env(tmp_path),
    )
    assert proc.stdout is not None
    where = None
    seen_during_the_run: set[str] = set()
    for line in proc.stdout:
        where = where or files_line(line)
        if line.startswith("call 2 over"):  # while it runs, the files are where it said
            assert where is not None
            seen_during_the_run = {p.name for p in where.iterdir()}
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    assert where is not None and where.parent == tmp_path
    assert {"default-key.pem", "default-cert.pem", "keys.log"} <= seen_during_the_run
    assert not where.exists() and list(tmp_path.iterdir()) == []


def test_demo_removes_its_files_when_stopped(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tlstrace", "demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=demo_env(tmp_path),
        )
        assert proc.stdout is not None
        where = None
        for line in proc.stdout:
            where = where or files_line(line)
            if line.startswith("call 1 over"):
                break
        assert where is not None
        deadline = time.monotonic() + 10
        while not (where / "default-key.pem").exists():  # the private key is there
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, (sig, proc.returncode)
        assert not where.exists(), sig
    assert list(tmp_path.iterdir()) == []
