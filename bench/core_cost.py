"""CPU of the relay's adapters and core alone, in one process, no sockets: a server TlsLeg and
its PlainLeg partner on mock transports, fed records a client encrypted beforehand.

    python -m bench.core_cost [--messages 200000] [--handshakes 2000] [--profile]

- relay: µs per message through TlsLeg.data_received (4 INVITEs per read, one TLS record each)
  and back through PlainLeg.data_received (4 responses per read) then TlsLeg.send.
- handshake: µs of the relay side per new TLS 1.3 connection (leg creation, connection_made,
  its data_received calls, close), the in-memory client's work not counted.
For comparing changes to the relay code on one machine; not a figure beside HAProxy.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from tlstrace.config import Config, ServerDomain
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.plain_leg import PlainLeg
from tlstrace.relay.runtime import Relay
from tlstrace.relay.tls_leg import TlsLeg
from tlstrace.tls.certgen import issue, make_ca
from tlstrace.tls.contexts import ServerContexts, build_server_identity

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\nTo: Bob <sip:bob@example.com>\r\n"
    b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1;transport=tls>\r\nContent-Type: application/sdp\r\n"
    b"Content-Length: 142\r\n\r\n" + b"v=0\r\n" + b"a" * 135 + b"\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776asdhds\r\n"
    b"To: Bob <sip:bob@example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class MockTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(data)

    def take(self) -> bytes:
        out = b"".join(self.written)
        self.written.clear()
        return out

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5061) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Setup:
    def __init__(self, root: Path) -> None:
        ca = make_ca("core_cost CA")
        issued = issue("a", issuer=ca, names=["a.example.com"], org="core_cost")
        crt, key = root / "a.crt", root / "a.key"
        issued.write(crt, key)
        (root / "ca.pem").write_bytes(ca.cert_pem())
        domain = ServerDomain(name="a", certificate=crt, private_key=key)
        self.contexts = ServerContexts(
            [build_server_identity(Config.model_validate({}), domain, "d", "bench")]
        )
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.load_verify_locations(cafile=str(root / "ca.pem"))
        self.client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.loop = asyncio.new_event_loop()
        self.relay = Relay(Config.model_validate({}), self.loop, source="bench")

    def pair(
        self, clock: list[float]
    ) -> tuple[TlsLeg, MockTransport, PlainLeg, MockTransport, Any]:
        """A handshaken server leg and its backend; `clock[0]` gains the relay's time."""
        t0 = time.perf_counter()
        conn = Connection("inbound", ("192.0.2.1", 4000), ("127.0.0.1", 5061), "tls:x")
        leg = TlsLeg(self.relay, conn, self.contexts.initial, server_side=True)
        t = MockTransport()
        leg.connection_made(t)
        backend = PlainLeg(self.relay, leg, name="backend")
        bt = MockTransport()
        backend.connection_made(bt)
        leg.partner = backend
        clock[0] += time.perf_counter() - t0
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = self.client_ctx.wrap_bio(incoming, outgoing, server_hostname="a.example.com")
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                t0 = time.perf_counter()
                leg.data_received(data)
                clock[0] += time.perf_counter() - t0
                incoming.write(t.take())
        data = outgoing.read()
        t0 = time.perf_counter()
        leg.data_received(data)
        clock[0] += time.perf_counter() - t0
        return leg, t, backend, bt, (client, incoming, outgoing)


def relay_cost(setup: Setup, messages: int) -> float:
    leg, t, backend, bt, (client, _incoming, outgoing) = setup.pair([0.0])
    rounds = messages // 4
    # every read encrypted beforehand: a TLS record replayed would fail its MAC and close the
    # leg, after which data_received does nothing
    reads = []
    for _ in range(rounds):
        for _ in range(4):
            client.write(INVITE)
        reads.append(outgoing.read())
    answers = OK * 4
    started = time.process_time()
    for i in range(rounds):
        leg.data_received(reads[i])
        backend.data_received(answers)
        if not i & 63:
            t.written.clear()
            bt.written.clear()
    elapsed = time.process_time() - started
    if leg.closed:
        raise SystemExit("core_cost: the leg closed during the run")
    leg.close(CloseReason.SHUTDOWN)
    return elapsed / (rounds * 4) * 1e6


def handshake_cost(setup: Setup, n: int) -> float:
    clock = [0.0]
    for _ in range(n):
        leg, _t, _backend, _bt, _client = setup.pair(clock)
        t0 = time.perf_counter()
        leg.close(CloseReason.EOF)
        leg.connection_lost(None)
        clock[0] += time.perf_counter() - t0
    return clock[0] / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile each part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(Path(tmp))
        for name, fn, n in (
            ("relay", relay_cost, args.messages),
            ("handshake", handshake_cost, args.handshakes),
        ):
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                fn(setup, n)
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            else:
                fn(setup, max(n // 10, 1))  # warm-up
                print(f"{name}: {fn(setup, n):.2f} us")


if __name__ == "__main__":
    main()
