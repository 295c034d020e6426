"""Kamailio (Debian package) as the TLS peer of a tcp: listener, for tests: it answers every
INVITE with 100, 180 and 200 (statelessly, with a To tag), absorbs ACKs, answers BYE, OPTIONS
and anything else with 200, over the TLS connection the request came on. It logs each request
with its Call-ID, so a test can count what it saw."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support.kamailio_sip import MODULES
from tests.support.net import free_port, wait_port
from tests.support.procs import stop_group

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=4
auto_aliases=no
dns=no
rev_dns=no
enable_tls=yes
listen=tls:127.0.0.1:{port}
tcp_connection_lifetime=3600
mpath="{mpath}"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
modparam("tls", "config", "{tls_cfg}")

request_route {{
    xlog("L_NOTICE", "PEER $rm ci=$ci\\n");
    force_rport();
    if (is_method("ACK")) {{ exit; }}
    if (is_method("INVITE")) {{
        sl_send_reply("100", "Trying");
        sl_send_reply("180", "Ringing");
        append_to_reply("Contact: <sip:peer@127.0.0.1:{port};transport=tls>\\r\\n");
        sl_send_reply("200", "OK");
        exit;
    }}
    sl_send_reply("200", "OK");
}}
"""

TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}
"""


class KamailioTlsPeer:
    def __init__(self, workdir: Path, cert: Path, key: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        tls_cfg = workdir / "tls.cfg"
        tls_cfg.write_text(TLS_CFG.format(cert=cert, key=key))
        self.cfg = workdir / "kamailio.cfg"
        self.cfg.write_text(CONFIG.format(port=self.port, mpath=MODULES, tls_cfg=tls_cfg))
        check = subprocess.run(
            ["kamailio", "-c", "-f", str(self.cfg)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise RuntimeError(f"kamailio config check failed:\n{check.stderr}")
        self.log_path = workdir / "kamailio.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "kamailio",
                "-f",
                str(self.cfg),
                "-DD",
                "-E",
                "-m",
                "64",
                "-M",
                "8",
                "-Y",
                str(workdir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port("127.0.0.1", self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"kamailio did not start:\n{self.log_path.read_text(errors='replace')}"
            ) from None

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def count(self, method: str) -> int:
        return self.log.count(f"PEER {method} ci=")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return self.log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the kamailio log:\n{self.log}")

    def stop(self) -> None:
        stop_group(self.proc, grace=10)
        self._log.close()
