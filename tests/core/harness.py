"""In-memory parts for the core tests: a fake clock, certificates, contexts, an observer that
records, and a client TlsSession wired to a relay TlsCore through memory."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlstrace.config import Config, ServerDomain
from tlstrace.relay.connection import CloseReason, Connection
from tlstrace.relay.context import RelayContext
from tlstrace.relay.core import TlsCore
from tlstrace.relay.runtime import listener_directions
from tlstrace.relay.stats import RelayStats
from tlstrace.sip.framing import SipFramer
from tlstrace.tls.certgen import Issued, issue, make_ca
from tlstrace.tls.certinfo import CertInfo
from tlstrace.tls.contexts import ServerContexts, build_server_identity
from tlstrace.tls.failures import HandshakeFailure
from tlstrace.tls.keylog import KeyLogTap
from tlstrace.tls.session import (
    ContextChooser,
    HandshakeDone,
    HandshakeFailed,
    SessionEvent,
    TlsSession,
)

LISTENER = "tls:127.0.0.1:5061"


class FakeClock:
    #: what `wall()` adds to the monotonic time: the epoch seconds at t = 0
    EPOCH = 1_780_000_000.0

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.EPOCH + self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


@dataclass
class Pki:
    root: Path
    ca: Issued
    other_ca: Issued
    ca_file: Path
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @classmethod
    def make(cls, root: Path) -> Pki:
        ca = make_ca("core test CA")
        other = make_ca("untrusted CA", org="elsewhere")
        ca_file = root / "ca.pem"
        ca_file.write_bytes(ca.cert_pem())
        pki = cls(root, ca, other, ca_file)
        for name, names, client in (
            ("a", ["a.example.com"], False),
            ("b", ["b.example.com"], False),
            ("client", ["phone.example.com"], True),
        ):
            issued = issue(name, issuer=ca, names=names, client=client, org="core tests")
            paths = (root / f"{name}.crt", root / f"{name}.key")
            issued.write(*paths)
            pki.files[name] = paths
        issued = issue("rogue", issuer=other, names=["a.example.com"], org="elsewhere")
        paths = (root / "rogue.crt", root / "rogue.key")
        issued.write(*paths)
        pki.files["rogue"] = paths
        return pki

    def domain(self, cert: str, **kw: Any) -> ServerDomain:
        crt, key = self.files[cert]
        return ServerDomain(name=kw.pop("name", cert), certificate=crt, private_key=key, **kw)

    def server_contexts(self, *domains: ServerDomain) -> ServerContexts:
        config = Config()
        return ServerContexts(
            [
                build_server_identity(config, d, f"server_domain[{i}]", "test")
                for i, d in enumerate(domains)
            ]
        )

    def client_context(
        self,
        *,
        cert: str | None = None,
        version: ssl.TLSVersion | None = None,
        verify: bool = True,
        ciphers: str | None = None,
    ) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        if cert is not None:
            crt, key = self.files[cert]
            ctx.load_cert_chain(str(crt), str(key))
        return ctx


class Tracer:
    def __init__(self) -> None:
        self.batches: list[tuple[list[bytes], bool]] = []
        self.timestamps: list[float] = []

    def message(self, data: bytes, received: bool, timestamp: float) -> None:
        self.batches.append(([data], received))
        self.timestamps.append(timestamp)

    def messages(self, chunks: list[bytes], received: bool, timestamp: float) -> None:
        self.batches.append((list(chunks), received))
        self.timestamps.append(timestamp)

    def backend_leg(self, addresses: tuple[tuple[str, int], tuple[str, int]] | None) -> None:
        pass


class Observer:
    def __init__(self, trace: bool = False) -> None:
        self.trace = trace
        self.done: list[Connection] = []
        self.failed: list[tuple[HandshakeFailure, str]] = []
        self.closes: list[CloseReason] = []
        self.tracer: Tracer | None = None

    def handshake_done(self, conn: Connection) -> Tracer | None:
        self.done.append(conn)
        if self.trace:
            self.tracer = Tracer()
        return self.tracer

    def handshake_failed(self, conn: Connection, reason: HandshakeFailure, message: str) -> None:
        self.failed.append((reason, message))

    def closed(self, conn: Connection, reason: CloseReason, traced: object) -> None:
        self.closes.append(reason)


class ServerIdentityOf:
    """LocalIdentity of a server core: the certificate of the context's domain."""

    def __init__(self, contexts: ServerContexts) -> None:
        self.contexts = contexts

    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        ident = self.contexts.identity_of(context)
        if ident is None:
            return None, None
        return ident.cert, ident.domain.name if started else None


def make_ctx(clock: FakeClock, observer: Observer | None = None, **config: Any) -> RelayContext:
    keylog = KeyLogTap() if config.pop("keys", False) else None
    cfg = Config(**config)
    return RelayContext(
        cfg,
        RelayStats([*listener_directions(cfg), (LISTENER, ("inbound",))]),
        observer=observer or Observer(),
        keylog=keylog,
        clock=clock,
        wall=clock.wall,
    )


class Wire:
    """A client TlsSession and the relay's server TlsCore, joined through memory.

    What the core hands to its partner collects in `forwarded` (and is framed again by a
    backend-side framer into `backend`); what the client decrypts collects in `client_got`."""

    def __init__(
        self,
        ctx: RelayContext,
        contexts: ServerContexts,
        client_ctx: ssl.SSLContext,
        *,
        sni: str | None = "a.example.com",
        ssl_session: ssl.SSLSession | None = None,
        start_client: bool = True,
        chooser: ContextChooser | None = None,
    ) -> None:
        self.ctx = ctx
        clock = ctx.clock
        self.conn = Connection("inbound", ("192.0.2.1", 40000), ("127.0.0.1", 5061), LISTENER)
        self.server = TlsSession(
            contexts.initial,
            server_side=True,
            handshake_timeout_ms=ctx.config.tls_handshake_timeout,
            now=clock(),
            chooser=chooser if chooser is not None else None if contexts.single else contexts,
            keylog=ctx.keylog,
            keylog_lines=self.conn.keylog,
        )
        self.core = TlsCore(
            ctx,
            self.conn,
            self.server,
            ServerIdentityOf(contexts),
            direction_in="from_client",
            direction_out="to_client",
        )
        self.client = TlsSession(
            client_ctx,
            server_side=False,
            handshake_timeout_ms=ctx.config.tls_handshake_timeout,
            now=clock(),
            server_hostname=sni,
            ssl_session=ssl_session,
        )
        self.client_events: list[SessionEvent] = []
        self.client_got = b""
        self.forwarded: list[bytes] = []
        self.forwarded_msgs = 0
        self.backend = SipFramer(
            max_msg_size=1 << 20, pingpong=False, max_chunks=None, strict=False
        )
        self.backend_msgs: list[bytes] = []
        self.opened = 0
        self.server.start(clock())
        if start_client:
            self.client.start(clock())
            self.pump()

    @property
    def now(self) -> float:
        return self.ctx.clock()

    def to_relay(self, data: bytes) -> list[bytes]:
        """Raw bytes into the relay core; returns (and collects) what it forwards."""
        out = self.core.receive(data, self.now)
        self._collect(out)
        return out

    def _collect(self, out: list[bytes]) -> None:
        core = self.core
        self.opened += len(core.pop_events())
        if out:
            self.forwarded += out
            self.forwarded_msgs += core.batch_msgs
            joined = b"".join(out)
            buf: list[bytes] = []
            assert self.backend.feed_into(joined, buf) >= 0
            self.backend_msgs += [c for c in buf if c[:1] not in (b"\r", b"\n", b" ", b"\t")]

    def from_relay(self) -> bytes:
        """What the relay core has due for the client (handshake, pongs, alerts)."""
        return self.core.data_to_send()

    def pump(self, limit: int = 50) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(limit):
            moved = False
            c = self.client.data_to_send()
            if c:
                moved = True
                self.to_relay(c)
            s = self.from_relay()
            if s:
                moved = True
                self.client_in(s)
            if not moved:
                return
        raise AssertionError("the sessions keep talking")

    def client_in(self, data: bytes) -> None:
        if self.client.state == 2:
            return
        got = self.client.receive(data, self.now)
        self.client_got += b"".join(got)
        self.client_events += self.client.pop_events()

    def client_send(self, plaintext: bytes) -> bytes:
        """The client encrypts `plaintext`; the ciphertext (not yet given to the relay)."""
        return self.client.send(plaintext)

    def relay_send(self, chunks: list[bytes], nmsgs: int) -> None:
        """The partner writes to the client through the core."""
        wire = self.core.send(chunks, nmsgs, self.now)
        if wire:
            self.client_in(wire)

    @property
    def client_done(self) -> HandshakeDone | None:
        return next((e for e in self.client_events if isinstance(e, HandshakeDone)), None)

    @property
    def client_failed(self) -> HandshakeFailed | None:
        return next((e for e in self.client_events if isinstance(e, HandshakeFailed)), None)

    @property
    def close_reason(self) -> CloseReason | None:
        req = self.core.close_request
        return req[0] if req is not None else None
