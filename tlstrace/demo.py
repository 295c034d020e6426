"""`tlstrace demo`: the whole loop on one machine in a few seconds.

One process runs the relay on its defaults (TLS on 127.0.0.1:5061, relaying to 127.0.0.1:5060),
a minimal SIP responder as its backend, a HEP listener that prints what tracing sends, and a
client that places calls over TLS 1.2 and TLS 1.3. Busy default ports are replaced by free
ones, and the output says so. The generated certificate, its private key and the key-log file
live in a temporary directory the output names, removed when the demo ends (also on Ctrl-C or
SIGTERM) unless `--keep` is given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from pathlib import Path

import uvloop

from hep.codec import HepPacket
from hep.listen import Received
from hep.listen import serve as serve_hep
from tlstrace.app import Sidecar
from tlstrace.config import Config
from tlstrace.responder import serve as serve_responder
from tlstrace.sip.framing import Message, SipFramer

BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def _port(preferred: int, kind: int = socket.SOCK_STREAM) -> tuple[int, bool]:
    """`preferred` if it is free on 127.0.0.1, else a free one (and False)."""
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred, True
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1]), False


def _invite(call_id: str, cseq: int, method: str = "INVITE", body: bytes = b"") -> bytes:
    lines = [
        f"{method} sip:bob@example.com SIP/2.0",
        f"Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-{call_id}-{cseq}",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=alice1",
        "To: <sip:bob@example.com>" + (";tag=x" if method != "INVITE" else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@192.0.2.10:5061;transport=tls>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Printer:
    def __init__(self) -> None:
        self.shown_full = False

    def __call__(self, p: HepPacket, _info: Received) -> None:
        cid = (p.correlation_id or b"").decode(errors="replace")
        if p.proto_type == 1:
            first = p.payload.split(b"\r\n", 1)[0].decode(errors="replace")
            print(
                f"  {DIM}HEP sip {RESET} {p.src_ip}:{p.src_port} -> {p.dst_ip}:{p.dst_port}"
                f"  {BOLD}{first}{RESET}  {DIM}Call-ID {cid}{RESET}"
            )
            if not self.shown_full:
                self.shown_full = True
                print(
                    DIM
                    + "\n".join(
                        "      | " + line
                        for line in p.payload.decode(errors="replace").splitlines()
                    )
                    + RESET
                )
        elif p.proto_type == 89:
            e = json.loads(p.payload)
            extra = f"  reason: {e['Reason']}" if "Reason" in e else ""
            keys = f"  ({len(e['keylog'].splitlines())} key-log lines)" if "keylog" in e else ""
            print(
                f"  {DIM}HEP net {RESET} conn {cid}: {BOLD}{e['Event']} {e['Status']}{RESET}"
                f"  {e['Message']}{extra}{keys}"
            )
        elif p.proto_type == 100:
            r = json.loads(p.payload)
            print(
                f"  {DIM}HEP log {RESET} TLS session of call {cid}: {r['tls_version']} "
                f"{r['cipher']}, SNI {r['sni']}, handshake {r['handshake_ms']} ms, "
                f"certificate {r['local_certificate']['subject']}"
            )


async def _call(port: int, version: ssl.TLSVersion, n: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="sip.example.com"
    )
    framer = SipFramer(pingpong=False, max_chunks=None)

    async def answer() -> bytes:
        while True:
            for ev in framer.feed(await reader.read(65536)):
                if isinstance(ev, Message):
                    return ev.data

    call_id = f"demo-{n}@tlstrace"
    sdp = b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    writer.write(_invite(call_id, 1, body=sdp))
    await answer()
    writer.write(_invite(call_id, 1, "ACK"))
    writer.write(_invite(call_id, 2, "BYE"))
    await answer()
    writer.close()
    await writer.wait_closed()


async def _demo(state: Path, keep: bool) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    tls_port, tls_default = _port(5061)
    sip_port, sip_default = _port(5060)
    hep_port, hep_default = _port(9060, socket.SOCK_DGRAM)
    keylog = state / "keys.log"
    config = Config.model_validate(
        {
            "listener": [
                {"listen": f"tls:127.0.0.1:{tls_port}", "backend": f"tcp:127.0.0.1:{sip_port}"}
            ],
            "state_dir": str(state),
            "api_listen": "",
            "trace_on": True,
            "trace_keys": True,
            "keylog_file": str(keylog),
            "hep_id": [f"[demo]127.0.0.1:{hep_port};transport=udp"],
        }
    )
    print(
        f"{BOLD}tlstrace demo{RESET}: the relay, a SIP server, a HEP listener and a phone, "
        "all in this process\n"
    )
    note = "" if tls_default and sip_default else "  (the default ports were busy)"
    print(
        f"  relay        tls:127.0.0.1:{tls_port} -> tcp:127.0.0.1:{sip_port} "
        f"(a minimal SIP responder){note}"
    )
    print(
        f"  HEP listener udp:127.0.0.1:{hep_port}"
        f"{'' if hep_default else '  (9060 was busy)'} prints what tracing sends"
    )
    print(
        f"  files        {state}: the generated certificate and its private key, and the "
        f"key-log file {keylog.name};"
    )
    print(f"               {'kept (--keep)' if keep else 'removed when the demo ends'}\n")

    responder = await serve_responder("127.0.0.1", sip_port)
    hep = await serve_hep(f"udp:127.0.0.1:{hep_port}", Printer())
    sidecar = Sidecar(config)
    await sidecar.start()
    try:
        for n, version in enumerate([ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], 1):
            print(
                f"{BOLD}call {n} over {version.name.replace('_', '.')}{RESET}: "
                "INVITE, 200 OK, ACK, BYE, 200 OK"
            )
            await _call(tls_port, version, n)
            await asyncio.sleep(0.3)
            print()
    finally:
        await sidecar.shutdown()
        hep.close()
        responder.close()
    lines = keylog.read_text().splitlines() if keylog.exists() else []
    if not keep:
        print(
            f"{BOLD}session keys{RESET}: {len(lines)} NSS key-log lines; they also travelled "
            "in the HEP events above."
        )
        print(
            f"Removing {state} (the private key and the key-log file); `tlstrace demo --keep` "
            "keeps them, to read a capture with tshark."
        )
        return 0
    print(
        f"{BOLD}session keys{RESET}: {len(lines)} NSS key-log lines in {keylog} (mode 0600);"
        " they also travelled in the HEP events above."
    )
    print(f"Kept {state} (the private key and the key-log file): remove it when done.")
    print(f"To read SIP from a capture of port {tls_port} in the clear:")
    print(
        f"  tshark -r capture.pcapng -d tcp.port=={tls_port},tls -d tls.port=={tls_port},sip "
        f"-o tls.keylog_file:{keylog} -Y sip"
    )
    return 0


def run(keep: bool = False) -> int:
    """Run the demo; its temporary files go when it ends, however it ends, unless `keep`."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    state = Path(tempfile.mkdtemp(prefix="tlstrace-demo-"))
    try:
        return uvloop.run(_demo(state, keep))
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    except asyncio.CancelledError:  # SIGTERM
        return 128 + signal.SIGTERM
    finally:
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
