"""Kamailio (Debian package) as the SIP server behind the relay, for tests.

A registrar over TCP: REGISTER is stored with `set_contact_alias()` (so the contact points at
the TCP connection it came on), INVITE and MESSAGE are routed to registered users over that
same connection, OPTIONS is answered. `tcp_accept_haproxy` makes it read PROXY protocol v2.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port, wait_port
from tests.support.procs import stop_group

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
listen=tcp:127.0.0.1:{port}
tcp_connection_lifetime=3600
{haproxy}
mpath="{mpath}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 1)

request_route {{
    xlog("L_NOTICE", "KAM $rm from $si:$sp ci=$ci\\n");
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "Kamailio OK"); exit; }}
    if (is_method("REGISTER")) {{
        set_contact_alias();
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("INVITE|MESSAGE")) {{
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        handle_ruri_alias();
        xlog("L_NOTICE", "KAM relaying $rm to $du\\n");
        if (!t_relay()) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("ACK")) {{ exit; }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""


def available() -> bool:
    return shutil.which("kamailio") is not None and Path(MODULES, "registrar.so").exists()


class KamailioProcess:
    """One Kamailio started on a configuration file: checked with `kamailio -c` first, run in
    the foreground with its log in the work folder, stopped with its process group."""

    port: int

    def start(self, workdir: Path, config: str) -> None:
        self.cfg = workdir / "kamailio.cfg"
        self.cfg.write_text(config)
        check = subprocess.run(
            ["kamailio", "-c", "-f", str(self.cfg)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise RuntimeError(f"kamailio config check failed:\n{check.stderr}")
        self.log_path = workdir / "kamailio.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        argv = ["kamailio", "-f", str(self.cfg), "-DD", "-E", "-m", "64", "-M", "8"]
        self.proc = subprocess.Popen(
            [*argv, "-Y", str(workdir)],
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


class KamailioSip(KamailioProcess):
    def __init__(self, workdir: Path, *, haproxy: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.start(
            workdir,
            CONFIG.format(
                port=self.port, mpath=MODULES, haproxy="tcp_accept_haproxy=yes" if haproxy else ""
            ),
        )
