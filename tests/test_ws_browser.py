"""The real thing: JsSIP (npm) in Debian's headless Chromium registers over wss: through
tlstrace to Debian's Kamailio (a TCP-only configuration: tlstrace speaks TCP to it), and two
such phones complete a call (INVITE, 200, ACK, BYE). The trace reaches Kamailio's sipcapture
with the phones' addresses and their WSS Via."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.support import jssip, kamailio_sip
from tests.support.headless_chromium import chromium
from tests.support.hepsink import HepSink
from tests.support.kamailio_capture import KamailioCapture
from tests.support.net import free_port
from tests.support.relay import RelayProcess

Factory = Callable[..., RelayProcess]

#: a registrar and proxy over TCP for phones behind a relay (the README's "Behind Kamailio"
#: recipe): contacts get an alias for the TCP connection they came on, requests to a phone
#: follow it, the dialog is record-routed
CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
listen=tcp:127.0.0.1:{port}
alias="sip.example.com"
tcp_connection_lifetime=3600
mpath="{mpath}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "nathelper.so"
modparam("usrloc", "db_mode", 0)

request_route {{
    xlog("L_NOTICE", "KAM $rm $ru from $si:$sp ci=$ci\\n");
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (is_method("INVITE|UPDATE")) {{ set_contact_alias(); }}
            handle_ruri_alias();
            if (is_method("ACK")) {{ forward(); exit; }}
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "Kamailio OK"); exit; }}
    if (is_method("REGISTER")) {{
        set_contact_alias();
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("INVITE")) {{
        record_route();
        set_contact_alias();
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        handle_ruri_alias();
        xlog("L_NOTICE", "KAM relaying $rm to $du\\n");
        t_on_reply("REPLY");
        if (!t_relay()) {{ sl_reply_error(); }}
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}

onreply_route[REPLY] {{
    if (is_present_hf("Contact")) {{ set_contact_alias(); }}
}}
"""

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>phones</title>
<script src="/jssip.js"></script></head><body><pre id="log"></pre><script>
window.state = {log: []};
function log(s) {
  window.state.log.push(s);
  document.getElementById("log").textContent += s + "\\n";
}
function phone(user, wss) {
  const socket = new JsSIP.WebSocketInterface(wss);
  const ua = new JsSIP.UA({sockets: [socket], uri: "sip:" + user + "@sip.example.com",
    register: true, register_expires: 300, session_timers: false,
    user_agent: "JsSIP phone " + user});
  const s = window.state[user] = {registered: false, calls: []};
  ua.on("registered", () => { s.registered = true; log(user + " registered"); });
  ua.on("registrationFailed", (e) => log(user + " registration failed " + e.cause));
  ua.on("newRTCSession", (e) => {
    const session = e.session;
    s.session = session;
    const c = {events: []};
    s.calls.push(c);
    ["progress", "accepted", "confirmed", "ended", "failed"].forEach((name) =>
      session.on(name, (ev) => {
        const cause = ev && ev.cause ? ":" + ev.cause : "";
        c.events.push(name + cause);
        log(user + " " + name + cause);
      }));
    if (e.originator === "remote") {
      session.answer({mediaConstraints: {audio: false, video: false},
                      pcConfig: {iceServers: []}});
    }
  });
  ua.start();
  return ua;
}
window.call = function (from, to) {
  window.state.ua[from].call("sip:" + to + "@sip.example.com", {
    mediaConstraints: {audio: false, video: false},
    rtcOfferConstraints: {offerToReceiveAudio: true},
    pcConfig: {iceServers: []}});
};
window.hangup = function (user) { window.state[user].session.terminate(); };
window.start = function (wss) {
  window.state.ua = {alice: phone("alice", wss), bob: phone("bob", wss)};
};
</script></body></html>
"""

FLAGS = [
    "--ignore-certificate-errors",  # tlstrace's generated certificate
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


class _Pages(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, tuple[str, bytes]]] = {}

    def do_GET(self) -> None:
        kind, body = self.files.get(self.path, ("text/plain", b""))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[str]:
    _Pages.files = {
        "/": ("text/html", PAGE.encode()),
        "/jssip.js": ("application/javascript", jssip.bundle().encode()),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Kamailio(kamailio_sip.KamailioProcess):
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.start(workdir, CONFIG.format(port=self.port, mpath=kamailio_sip.MODULES))


def _wait(driver: Any, script: str, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return JSON.stringify(window.state.log)")
    logs = [e["message"] for e in driver.get_log("browser")][-10:]
    raise AssertionError(f"{what}: not within {timeout} s; page log {state}; console {logs}")


def test_jssip_in_chromium_registers_and_calls_through_wss(
    relay_factory: Factory, tmp_path: Path, pages: str
) -> None:
    if not jssip.available():
        pytest.fail("JsSIP is needed: scripts/install-test-deps.sh")
    if not kamailio_sip.available():
        pytest.fail("kamailio is needed: scripts/install-test-deps.sh")
    kam = Kamailio(tmp_path / "kamailio")
    try:
        with (
            KamailioCapture(tmp_path / "capture", transports=("udp",), ipv6=False) as cap,
            HepSink() as sink,
        ):
            port = free_port()
            relay = relay_factory(
                {
                    "trace_on": True,
                    "hep_id": [f"[kam]127.0.0.1:{cap.udp_port};transport=udp", sink.hep_id],
                    "ws_origins": [pages],
                    "listener": [
                        {
                            "listen": f"wss:127.0.0.1:{port}",
                            "backend": f"tcp:127.0.0.1:{kam.port}",
                        }
                    ],
                }
            )
            with chromium(flags=FLAGS) as driver:
                driver.get(pages + "/")
                driver.execute_script(f"window.start('wss://127.0.0.1:{port}/ws')")
                _wait(
                    driver,
                    "return window.state.alice.registered && window.state.bob.registered",
                    "both phones registered",
                )
                driver.execute_script("window.call('alice', 'bob')")
                _wait(
                    driver,
                    "return window.state.alice.calls.length && window.state.bob.calls.length &&"
                    " window.state.alice.calls[0].events.includes('confirmed') &&"
                    " window.state.bob.calls[0].events.includes('confirmed')",
                    "the call confirmed on both phones",
                )
                driver.execute_script("window.hangup('alice')")
                _wait(
                    driver,
                    "return window.state.bob.calls[0].events.some(e => e.startsWith('ended'))"
                    " && window.state.alice.calls[0].events.some(e => e.startsWith('ended'))",
                    "the call ended on both phones",
                )
                log = json.loads(driver.execute_script("return JSON.stringify(window.state.log)"))
            assert not [line for line in log if "failed" in line], log
            # the BYE from alice's browser, and the one to bob's, as Homer's capture stores them
            bye_rows = cap.wait_rows("sip_capture", 2, where="method = ?", params=("BYE",))
            invites = cap.wait_rows("sip_capture", 2, where="method = ?", params=("INVITE",))
            for rows in (invites, bye_rows):
                # alice's browser to tlstrace: the browser's address and its WSS Via
                sent = [r for r in rows if r["destination_port"] == port]
                # tlstrace to bob's browser (Kamailio's Via on top of alice's)
                got = [r for r in rows if r["source_port"] == port]
                assert len(sent) == 1 and len(got) == 1, rows
                assert sent[0]["via_1"].startswith("SIP/2.0/WSS ")
                assert sent[0]["source_ip"] == "127.0.0.1"
                assert sent[0]["source_port"] != got[0]["destination_port"]  # two browsers
                assert b"\r\nVia: SIP/2.0/WSS " in got[0]["msg"]
            assert {p.ip_proto for p in sink.packets(1)} == {3}
            events = [json.loads(p.payload) for p in sink.packets(89)]
            assert [e["Protocol"] for e in events if e["Event"] == "ACCEPTED"] == ["WSS", "WSS"]
            records = [json.loads(p.payload) for p in sink.packets(100)]
            assert records and all(r["origin"] == pages for r in records)
            assert any(r["user_agent"].startswith("Mozilla/") for r in records)
            assert "Traceback" not in relay.log
    finally:
        kam.stop()
