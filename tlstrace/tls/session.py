"""One TLS session driven through OpenSSL memory BIOs, sans-IO: bytes and the time in, bytes to
send, plaintext and state changes out. No sockets, no event loop.

    session = TlsSession(ctx, server_side=True, handshake_timeout_ms=5000, now=clock())
    session.start(now)                      # arms the handshake deadline (a client: its hello)
    plaintext = session.receive(data, now)  # one chunk per TLS record, for the framer
    for event in session.pop_events(): ... # HandshakeDone, HandshakeFailed, PeerClosed
    transport.write(session.data_to_send())
    transport.write(session.send(b"..."))  # encrypt; returns every byte due, deferred ones too
    session.next_deadline() / session.handle_timer(now)

What it keeps from the relay's history (see the README's TLS sections):

- A server that must choose its context by SNI (`chooser`, a multi-domain listener) reads the
  whole ClientHello itself (tls/clienthello.HelloReader, at most MAX_HELLO_BYTES) before
  OpenSSL sees a byte, then starts OpenSSL on the chosen domain's context.
- The first bytes of a server session are sniffed: plain SIP, something that is not TLS and
  SSLv2-style hellos fail at once with their own reason.
- OpenSSL's SNI callback (tls/contexts.py) marks the SSLObject when it read another name than
  tlstrace did: that handshake fails as `sni_mismatch`.
- Key-log lines go to the session's own list (KeyLogTap.current is set around do_handshake).
- What a TLS 1.3 server has left to send after its handshake (session tickets) waits for the
  first write instead of costing a send of its own.
- TLS records are followed through the byte stream (tls/records.py): `records_ended` is how
  many ended in the last `receive`, `record_partial` whether one is incomplete.
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from typing import Any, Final, Protocol

from tlstrace.tls import records
from tlstrace.tls.clienthello import MAX_HELLO_BYTES, TLS1_2, Hello, HelloKind, HelloReader, sniff
from tlstrace.tls.failures import HandshakeFailure, classify
from tlstrace.tls.keylog import KeyLogTap
from tlstrace.tls.sni import SNI_SEEN, SniSeen

#: the most plaintext asked of OpenSSL at once (a record holds at most 16 KiB)
READ_SIZE: Final = 65536

#: states
HANDSHAKE: Final = 0
OPEN: Final = 1
CLOSED: Final = 2


def _shared(text: str | None) -> str | None:
    return sys.intern(text) if text is not None else None


class ContextChooser(Protocol):
    """What picks a server context from the SNI read in the ClientHello (ServerContexts)."""

    def select(self, server_name: str | None) -> ssl.SSLContext: ...


@dataclass(slots=True, eq=False)
class HandshakeDone:
    """The handshake completed; its facts."""

    version: str | None
    cipher: str | None
    alpn: str | None
    resumed: bool
    #: the name the client sent (server side), or the one we sent (client side)
    sni: str | None
    peer_cert_der: bytes | None
    #: the context the handshake ran on (the server domain chosen by SNI)
    context: ssl.SSLContext
    #: seconds from the session's creation
    elapsed: float


@dataclass(slots=True, eq=False)
class HandshakeFailed:
    kind: HandshakeFailure
    message: str
    #: what the client's first bytes said (its SNI, client random, versions), when read
    hello: Hello | None
    #: the context the handshake ran (or would have run) on
    context: ssl.SSLContext
    #: OpenSSL had started (False: refused before, e.g. on sniffed bytes)
    started: bool


@dataclass(slots=True, eq=False)
class PeerClosed:
    """The peer ended the session: close_notify (`error` False) or a fatal TLS error."""

    error: bool
    detail: str


SessionEvent = HandshakeDone | HandshakeFailed | PeerClosed


class TlsSession:
    """The TLS layer of one connection (server or client side)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        handshake_timeout_ms: int,
        now: float,
        server_hostname: str | None = None,
        chooser: ContextChooser | None = None,
        keylog: KeyLogTap | None = None,
        keylog_lines: list[str] | None = None,
        ssl_session: ssl.SSLSession | None = None,
    ) -> None:
        #: the context OpenSSL runs (or will run) on
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.handshake_timeout_ms = handshake_timeout_ms
        self.chooser = chooser
        #: the tap that takes OpenSSL's key-log lines (None: keys are not wanted)
        self.keylog = keylog
        #: the lines taken (None until the first is due: an empty list costs 64 bytes)
        self.keylog_lines: list[str] | None = keylog_lines
        #: a session to resume (client side)
        self.ssl_session = ssl_session
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        #: the ssl.SSLObject, where one is made (a client, a context of a subclass); a server
        #: runs on the C object alone (`sslobj`)
        self.obj: ssl.SSLObject | None = None
        #: OpenSSL's object, the C one behind ssl.SSLObject (None until the hello is read)
        self.sslobj: Any = None
        #: what the SNI callback saw (tls/sni.py): the name, and whether OpenSSL read another
        #: than tlstrace did
        self.sni_seen: str | None = None
        self.sni_mismatch = False
        self.state = HANDSHAKE
        self.created = now
        self.deadline = 0.0  # 0: none
        #: a server has looked at the client's first bytes
        self.sniffed = not server_side
        #: reading the whole ClientHello before choosing the context (see `chooser`)
        self.hello: HelloReader | None = HelloReader() if chooser is not None else None
        #: what that reading found (kept to explain a failed handshake)
        self.hello_facts: Hello | None = None
        #: the client's first bytes, kept during the handshake to explain a failure
        self.first_bytes = b""
        # where the incoming byte stream stands between TLS records
        self.rec_left = 0
        self.rec_head = b""
        #: records seen whole, and those already reported by `records_ended`
        self.records_in = 0
        self.records_seen = 0
        #: TLS records that ended within the last `receive` after the handshake
        self.records_ended = 0
        #: bytes in `outgoing` are due now (not only deferred session tickets)
        self.urgent = False
        #: state changes not yet popped (None while there are none: an empty list per
        #: connection costs 64 bytes)
        self.events: list[SessionEvent] | None = None

    # -- driving ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The transport is up: arm the handshake deadline; a client writes its hello."""
        self.deadline = now + self.handshake_timeout_ms / 1000
        if self.hello is None and self.sslobj is None:
            self._start_tls(self.context)
        if not self.server_side:
            self._do_handshake(now)

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Take bytes from the peer; return the plaintext they completed, one chunk per TLS
        record (state changes go to `events`)."""
        # follow TLS record boundaries; the common case, one whole record, is a length check
        n = len(data)
        if self.rec_left or self.rec_head or n < 5 or 5 + (data[3] << 8 | data[4]) != n:
            self.rec_left, self.rec_head, ended = records.advance_counting(
                self.rec_left, self.rec_head, data
            )
            self.records_in += ended
        else:
            self.records_in += 1
        if self.state != OPEN:
            return self._receive_handshake(data, now)
        self.incoming.write(data)
        return self._read()

    def _receive_handshake(self, data: bytes, now: float) -> list[bytes]:
        if self.state == CLOSED or not data:
            return []
        self._handshake_data(data, now)
        if self.state != OPEN or not self.incoming.pending:
            self.records_ended = 0
            return []
        return self._read()

    def _read(self) -> list[bytes]:
        sslobj = self.sslobj
        assert sslobj is not None
        # the C object, not ssl.SSLObject: one Python frame less per record
        read = sslobj.read
        incoming = self.incoming
        out: list[bytes] = []
        # what OpenSSL had to send before this read (TLS 1.3 session tickets wait for the
        # first write); anything it adds while reading is due at once
        queued = self.outgoing.pending
        # stop when OpenSSL has consumed every raw byte: reading on would only raise
        # SSLWantReadError, which costs more than the check
        while incoming.pending:
            try:
                chunk = read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError as e:
                self._event(PeerClosed(True, classify(e)[1]))
                break
            if not chunk:
                self._event(PeerClosed(False, "close_notify received"))
                break
            out.append(chunk)
        if self.outgoing.pending > queued:
            # alerts (no_renegotiation), a KeyUpdate answer: never left waiting in memory
            self.urgent = True
        self.records_ended = self.records_in - self.records_seen
        self.records_seen = self.records_in
        return out

    @property
    def record_partial(self) -> bool:
        """An incomplete TLS record is buffered."""
        return bool(self.rec_left or self.rec_head)

    def send(self, data: bytes) -> bytes:
        """Encrypt `data`; return every byte to write now (deferred ones included)."""
        sslobj = self.sslobj
        assert sslobj is not None and self.state == OPEN
        sslobj.write(data)
        self.urgent = False
        return self.outgoing.read()

    def queue(self, data: bytes) -> None:
        """Encrypt `data` to go out with the next `data_to_send()`."""
        sslobj = self.sslobj
        assert sslobj is not None and self.state == OPEN
        sslobj.write(data)
        self.urgent = True

    def data_to_send(self) -> bytes:
        """The bytes due now (handshake messages, alerts, close_notify, queued data)."""
        if not self.urgent:
            return b""
        self.urgent = False
        return self.outgoing.read()

    def close(self) -> None:
        """Send close_notify (an open session) and stop; what is due is in `data_to_send()`."""
        if self.state == OPEN and self.sslobj is not None:
            # (SSLObject.unwrap, and contextlib.suppress, without their Python frames)
            try:  # noqa: SIM105
                self.sslobj.shutdown()
            except ssl.SSLError:
                pass  # SSLWantReadError: our close_notify is out, theirs need not come
            self.urgent = True
        self.state = CLOSED
        self.deadline = 0.0

    def abort(self) -> None:
        """Stop without a close_notify (the transport is gone or being aborted)."""
        self.state = CLOSED
        self.deadline = 0.0

    def fail(self, kind: HandshakeFailure, message: str) -> None:
        """End a handshake from outside (the transport closed during it)."""
        if self.state == HANDSHAKE:
            self._failed(kind, message)

    def next_deadline(self) -> float | None:
        """When `handle_timer` must next be called (the handshake timeout), if ever."""
        return self.deadline or None

    def handle_timer(self, now: float) -> None:
        if self.state == HANDSHAKE and self.deadline and now >= self.deadline:
            self._failed(
                HandshakeFailure.HANDSHAKE_TIMEOUT,
                f"no complete handshake within {self.handshake_timeout_ms} ms",
            )

    def pop_events(self) -> list[SessionEvent]:
        events = self.events
        if events is None:
            return []
        self.events = None
        return events

    def _event(self, ev: SessionEvent) -> None:
        if self.events is None:
            self.events = [ev]
        else:
            self.events.append(ev)

    # -- handshake -------------------------------------------------------------------------

    def _start_tls(self, context: ssl.SSLContext) -> None:
        self.context = context
        if self.server_hostname is not None or type(context) is not ssl.SSLContext:
            obj = self.obj = context.wrap_bio(
                self.incoming,
                self.outgoing,
                server_side=self.server_side,
                server_hostname=self.server_hostname,
                session=self.ssl_session,
            )
            self.sslobj = obj._sslobj  # type: ignore[attr-defined]
            return
        # what SSLContext.wrap_bio does, without a host name to encode and without the
        # ssl.SSLObject wrapper and the weak reference OpenSSL's object keeps to it: the SNI
        # callback's notes come back through tls/sni.py
        self.sslobj = context._wrap_bio(  # type: ignore[attr-defined]
            self.incoming,
            self.outgoing,
            server_side=self.server_side,
            server_hostname=None,
            owner=None,
            session=self.ssl_session,
        )

    def _handshake_data(self, data: bytes, now: float) -> None:
        if not self.sniffed:
            self.sniffed = True
            if data[0] != 0x16:  # not a TLS handshake record: say what it is
                hello = sniff(data)
                if hello.kind is HelloKind.PLAIN_SIP:
                    self._failed(HandshakeFailure.PLAIN_SIP, "plain SIP sent to the TLS port")
                    return
                if hello.kind is HelloKind.NOT_TLS:
                    self._failed(
                        HandshakeFailure.NOT_TLS,
                        f"not a TLS ClientHello (first bytes {data[:8].hex()})",
                    )
                    return
                if hello.kind is HelloKind.SSLV2:
                    self._failed(HandshakeFailure.UNSUPPORTED_VERSION, "SSLv2-style ClientHello")
                    return
        if self.sslobj is None:
            # the whole ClientHello first: its SNI chooses the context (OpenSSL's session
            # cache, ticket keys and client-certificate policy are the domain's own)
            reader = self.hello
            chooser = self.chooser
            assert reader is not None and chooser is not None
            hello = reader.feed(data)
            if hello.kind is HelloKind.INCOMPLETE:
                if reader.total > MAX_HELLO_BYTES:
                    self._failed(
                        HandshakeFailure.HELLO_TOO_LARGE,
                        f"no complete ClientHello in {MAX_HELLO_BYTES} bytes",
                    )
                return
            self.hello = None
            self.hello_facts = hello
            if hello.bad_sni is not None:
                # refused here: OpenSSL would pass it to CPython's SNI callback, which cannot
                # decode it and prints a traceback on stderr for each such hello
                self._failed(
                    HandshakeFailure.UNRECOGNIZED_NAME,
                    f"server_name is not ASCII (RFC 6066 host names are ASCII, IDNs as "
                    f"A-labels): {hello.bad_sni[:60]!r}",
                )
                return
            self._start_tls(chooser.select(hello.sni))
            data = bytes(reader.raw)
        elif not self.first_bytes and self.server_side:
            self.first_bytes = data  # parsed only if the handshake fails
        self.incoming.write(data)
        self._do_handshake(now)

    def _do_handshake(self, now: float) -> None:
        sslobj = self.sslobj
        assert sslobj is not None
        tap = self.keylog
        if tap is not None:
            lines = self.keylog_lines
            if lines is None:
                lines = self.keylog_lines = []
            tap.current = lines
        # what the SNI callback sees in this step comes back here (tls/sni.py)
        seen = SNI_SEEN
        seen.active = True
        seen.called = seen.mismatch = False
        try:
            # (the C object, not ssl.SSLObject: its wrapper adds a Python call)
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.urgent = self.urgent or self.outgoing.pending > 0
            return
        except (ssl.SSLError, ssl.CertificateError, ValueError) as e:
            self.urgent = True  # the alert
            self._note_sni(seen)
            if self.sni_mismatch:
                self._failed(
                    HandshakeFailure.SNI_MISMATCH,
                    f"OpenSSL read the SNI {self.sni_seen!r} where tlstrace read another: refused",
                )
                return
            kind, message = classify(e)
            self._failed(kind, message)
            return
        finally:
            self._note_sni(seen)
            seen.active = False
            if tap is not None:
                tap.current = None
        version: str | None = sslobj.version()
        if not self.server_side or version != "TLSv1.3":
            self.urgent = True
        # else: all a TLS 1.3 server has left to send are session tickets; they go out with
        # the first response instead of costing a send of their own
        self._completed(now, sslobj, version)

    def _note_sni(self, seen: SniSeen) -> None:
        """Keep what the SNI callback reported in this handshake step, if it ran."""
        if seen.called:
            seen.called = False
            self.sni_seen = seen.name
            self.sni_mismatch = self.sni_mismatch or seen.mismatch
            seen.mismatch = False

    def _completed(self, now: float, sslobj: Any, version: str | None) -> None:
        """The handshake completed on `sslobj` (OpenSSL's C object)."""
        self.state = OPEN
        self.deadline = 0.0
        cipher = sslobj.cipher()
        resumed: bool = sslobj.session_reused
        sni: str | None
        if self.server_side:
            # the name the client sent now: on a TLS 1.2 resumption OpenSSL's callback is given
            # the one stored in the session
            facts = self.hello_facts
            if facts is None and resumed and self.first_bytes:
                facts = sniff(self.first_bytes)
            sni = (
                facts.sni
                if facts is not None and facts.client_random is not None
                else self.sni_seen
            )
        else:
            sni = self.server_hostname
        self.first_bytes, self.hello_facts = b"", None
        self.records_seen = self.records_in  # the handshake's records are not counted
        # (the texts every connection repeats are interned: the connection keeps them while it
        # is open, one copy for all instead of one each)
        alpn: str | None = sslobj.selected_alpn_protocol()
        self._event(
            HandshakeDone(
                _shared(version),
                _shared(cipher[0]) if cipher else None,
                _shared(alpn),
                resumed,
                _shared(sni),
                sslobj.getpeercert(True),
                self.context,
                now - self.created,
            )
        )

    def _failed(self, kind: HandshakeFailure, message: str) -> None:
        hello = self.hello_facts
        if hello is None and self.first_bytes:
            hello = sniff(self.first_bytes)
        elif hello is None and self.hello is not None and self.hello.total:
            hello = sniff(bytes(self.hello.raw))
        if hello is not None:
            self.first_bytes, self.hello_facts, self.hello = b"", None, None
            if (
                kind is HandshakeFailure.OTHER
                and hello.kind is HelloKind.TLS
                and hello.max_version
                and hello.max_version < TLS1_2
            ):
                kind = HandshakeFailure.UNSUPPORTED_VERSION
        self.state = CLOSED
        self.deadline = 0.0
        self._event(HandshakeFailed(kind, message, hello, self.context, self.sslobj is not None))
