"""`tlstrace demo` shows the whole loop: relay, backend, HEP listener, calls over TLS 1.2/1.3."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_shows_the_whole_loop() -> None:
    r = subprocess.run([sys.executable, "-m", "tlstrace", "demo"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "call 1 over TLSv1.2" in out and "call 2 over TLSv1.3" in out
    assert out.count("ACCEPTED SUCCESS") == 2 and out.count("CLOSED SUCCESS") == 2
    assert out.count("INVITE sip:bob@example.com SIP/2.0") >= 3  # twice traced, once in full
    assert "| Call-ID: demo-1@tlstrace" in out  # the decrypted SIP, line by line
    assert "TLS session of call demo-2@tlstrace: TLSv1.3" in out
    keylog = Path(re.search(r"key-log lines in (\S+) \(mode 0600\)", out).group(1))  # type: ignore[union-attr]
    assert keylog.stat().st_mode & 0o777 == 0o600
    assert len(keylog.read_text().splitlines()) == 6  # 1 line for TLS 1.2, 5 for TLS 1.3
    assert "\033[" not in out  # no colours when not on a terminal
    assert r.stderr == ""
