"""Kamailio (Debian package) as the TLS peer of a tcp: listener, for tests: it answers every
INVITE with 100, 180 and 200 (statelessly, with a To tag), absorbs ACKs, answers BYE, OPTIONS
and anything else with 200, over the TLS connection the request came on. It logs each request
with its Call-ID, so a test can count what it saw."""

from __future__ import annotations

from pathlib import Path

from tests.support.kamailio_sip import MODULES, KamailioProcess
from tests.support.net import free_port

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


class KamailioTlsPeer(KamailioProcess):
    def __init__(self, workdir: Path, cert: Path, key: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        tls_cfg = workdir / "tls.cfg"
        tls_cfg.write_text(TLS_CFG.format(cert=cert, key=key))
        self.start(workdir, CONFIG.format(port=self.port, mpath=MODULES, tls_cfg=tls_cfg))

    def count(self, method: str) -> int:
        return self.log.count(f"PEER {method} ci=")
