"""TLS records a normal client library will not send, inside an established session.

A client does its handshake with Python's ssl module over memory BIOs; the session's secrets
come from OpenSSL's key log (`SSLContext.keylog_filename`); from then on this module encrypts
records itself (with `cryptography`'s AEADs), so a test can send what an attacker would: TLS 1.2
renegotiation requests (a ClientHello as an encrypted handshake record), warning alerts, empty
application-data records, and TLS 1.3 KeyUpdates. Only AEAD suites: TLS 1.2 is pinned to
ECDHE-*-AES128-GCM-SHA256; TLS 1.3 takes whichever suite the server picks.

Key derivations (RFC 5246 §5 and §6.3, RFC 8446 §7.1 and §7.3), written for these tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import ssl
import struct
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HANDSHAKE, ALERT, APPLICATION_DATA = 22, 21, 23


def _p_sha256(secret: bytes, seed: bytes, size: int) -> bytes:
    out, a = b"", seed
    while len(out) < size:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + seed, hashlib.sha256).digest()
    return out[:size]


def _expand_label(algorithm: hashes.HashAlgorithm, secret: bytes, label: str, size: int) -> bytes:
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", size, len(full)) + full + b"\x00"
    return HKDFExpand(algorithm, size, info).derive(secret)


Aead = type[AESGCM] | type[ChaCha20Poly1305]
_TLS13_SUITES: dict[str, tuple[hashes.HashAlgorithm, int, Aead]] = {
    "TLS_AES_128_GCM_SHA256": (hashes.SHA256(), 16, AESGCM),
    "TLS_AES_256_GCM_SHA384": (hashes.SHA384(), 32, AESGCM),
    "TLS_CHACHA20_POLY1305_SHA256": (hashes.SHA256(), 32, ChaCha20Poly1305),
}


class InjectingClient:
    """A TLS client whose records after the handshake are built here."""

    def __init__(self, port: int, version: ssl.TLSVersion, timeout: float = 10.0) -> None:
        self._keylog = Path(tempfile.mkstemp(prefix="tlsinject-", suffix=".log")[1])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        if version == ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
        ctx.keylog_filename = str(self._keylog)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing)
        sent, received = b"", b""
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                sent += data
                self.sock.sendall(data)
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                received += data
                incoming.write(data)
        self.sock.sendall(outgoing.read())  # the client's Finished
        self.sock.settimeout(timeout)
        self.version = obj.version()
        self.cipher = obj.cipher()[0]  # type: ignore[index]
        client_random = sent[11:43]
        lines = self._keylog.read_text().split("\n")
        self._keylog.unlink()
        secrets = {
            f[0]: bytes.fromhex(f[2])
            for f in (ln.split() for ln in lines)
            if len(f) == 3 and bytes.fromhex(f[1]) == client_random
        }
        self.seq = 0
        if self.version == "TLSv1.2":
            server_random = received[11:43]
            block = _p_sha256(
                secrets["CLIENT_RANDOM"], b"key expansion" + server_random + client_random, 40
            )
            self.key, self.iv = block[0:16], block[32:36]
            self.seq = 1  # the client's Finished was record 0 under these keys
        else:
            self.algorithm, self.key_size, self.aead = _TLS13_SUITES[self.cipher]
            self._traffic(secrets["CLIENT_TRAFFIC_SECRET_0"])

    def _traffic(self, secret: bytes) -> None:
        self.secret = secret
        self.key = _expand_label(self.algorithm, secret, "key", self.key_size)
        self.iv = _expand_label(self.algorithm, secret, "iv", 12)
        self.seq = 0

    def record(self, content_type: int, payload: bytes) -> bytes:
        """One encrypted record of `content_type` carrying `payload`."""
        seq = self.seq
        self.seq += 1
        if self.version == "TLSv1.2":
            explicit = seq.to_bytes(8, "big")
            aad = explicit + struct.pack("!BHH", content_type, 0x0303, len(payload))
            sealed = AESGCM(self.key).encrypt(self.iv + explicit, payload, aad)
            body = explicit + sealed
            return struct.pack("!BHH", content_type, 0x0303, len(body)) + body
        inner = payload + bytes([content_type])
        header = struct.pack("!BHH", APPLICATION_DATA, 0x0303, len(inner) + 16)
        nonce = bytes(a ^ b for a, b in zip(self.iv, seq.to_bytes(12, "big"), strict=True))
        return header + self.aead(self.key).encrypt(nonce, inner, header)

    # -- what an attacker sends --

    def renegotiation_request(self, client_hello: bytes) -> bytes:
        """A ClientHello (a handshake message, without its record header) as a TLS 1.2
        record of the session."""
        return self.record(HANDSHAKE, client_hello)

    def warning_alert(self, description: int = 90) -> bytes:
        """A warning-level alert (default user_canceled)."""
        return self.record(ALERT, bytes([1, description]))

    def empty_record(self) -> bytes:
        return self.record(APPLICATION_DATA, b"")

    def key_update(self, requested: bool = True) -> bytes:
        """A TLS 1.3 KeyUpdate; our keys move on after it, as RFC 8446 §4.6.3 says."""
        rec = self.record(HANDSHAKE, b"\x18\x00\x00\x01" + (b"\x01" if requested else b"\x00"))
        self._traffic(
            _expand_label(self.algorithm, self.secret, "traffic upd", self.algorithm.digest_size)
        )
        return rec

    def sip(self, data: bytes) -> bytes:
        return self.record(APPLICATION_DATA, data)

    def read_raw(self, timeout: float) -> bytes:
        """Whatever the relay sends within `timeout` (b"" when nothing)."""
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not data:
                break
            got += data
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def record_types(data: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each whole record in `data`."""
    out, i = [], 0
    while i + 5 <= len(data):
        n = data[i + 3] << 8 | data[i + 4]
        if i + 5 + n > len(data):
            break
        out.append((data[i], n))
        i += 5 + n
    return out
