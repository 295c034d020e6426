"""Why a TLS handshake failed, as a short stable reason (for metrics and traces) plus the
OpenSSL text (for logs and OpenSIPS-compatible FAILURE events)."""

from __future__ import annotations

import re
import ssl
from enum import StrEnum


class HandshakeFailure(StrEnum):
    UNKNOWN_CA = "unknown_ca"
    BAD_CERTIFICATE = "bad_certificate"
    CERTIFICATE_REQUIRED = "certificate_required"
    NO_SHARED_CIPHER = "no_shared_cipher"
    #: no key-exchange group both sides allow (the server's `groups`)
    NO_SHARED_GROUP = "no_shared_group"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNRECOGNIZED_NAME = "unrecognized_name"
    #: OpenSSL read another SNI from the ClientHello than tlstrace did (see tls/contexts.py)
    SNI_MISMATCH = "sni_mismatch"
    #: no complete ClientHello within MAX_HELLO_BYTES (tls/clienthello.py)
    HELLO_TOO_LARGE = "hello_too_large"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    NOT_TLS = "not_tls"
    PLAIN_SIP = "plain_sip"
    PEER_CLOSED = "peer_closed"
    CONNECT_FAILED = "connect_failed"
    OTHER = "other"


_BY_OPENSSL_REASON: dict[str, HandshakeFailure] = {
    "TLSV1_ALERT_UNKNOWN_CA": HandshakeFailure.UNKNOWN_CA,
    "SSLV3_ALERT_BAD_CERTIFICATE": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": HandshakeFailure.BAD_CERTIFICATE,
    "TLSV1_ALERT_DECRYPT_ERROR": HandshakeFailure.BAD_CERTIFICATE,
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HandshakeFailure.CERTIFICATE_REQUIRED,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": HandshakeFailure.CERTIFICATE_REQUIRED,
    "NO_SHARED_CIPHER": HandshakeFailure.NO_SHARED_CIPHER,
    "SSLV3_ALERT_HANDSHAKE_FAILURE": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_CIPHERS_AVAILABLE": HandshakeFailure.NO_SHARED_CIPHER,
    "NO_SUITABLE_KEY_SHARE": HandshakeFailure.NO_SHARED_GROUP,
    "NO_SHARED_GROUPS": HandshakeFailure.NO_SHARED_GROUP,
    "NO_SUITABLE_GROUPS": HandshakeFailure.NO_SHARED_GROUP,
    "UNSUPPORTED_PROTOCOL": HandshakeFailure.UNSUPPORTED_VERSION,
    "TLSV1_ALERT_PROTOCOL_VERSION": HandshakeFailure.UNSUPPORTED_VERSION,
    "VERSION_TOO_LOW": HandshakeFailure.UNSUPPORTED_VERSION,
    "VERSION_TOO_HIGH": HandshakeFailure.UNSUPPORTED_VERSION,
    "NO_PROTOCOLS_AVAILABLE": HandshakeFailure.UNSUPPORTED_VERSION,
    "TLSV1_UNRECOGNIZED_NAME": HandshakeFailure.UNRECOGNIZED_NAME,
    "TLSV1_ALERT_UNRECOGNIZED_NAME": HandshakeFailure.UNRECOGNIZED_NAME,
    "CALLBACK_FAILED": HandshakeFailure.UNRECOGNIZED_NAME,
    "HTTP_REQUEST": HandshakeFailure.NOT_TLS,
    "WRONG_VERSION_NUMBER": HandshakeFailure.NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": HandshakeFailure.NOT_TLS,
    "RECORD_LENGTH_MISMATCH": HandshakeFailure.NOT_TLS,
    "UNEXPECTED_MESSAGE": HandshakeFailure.NOT_TLS,
    "BAD_PACKET_LENGTH": HandshakeFailure.NOT_TLS,
    "LENGTH_MISMATCH": HandshakeFailure.NOT_TLS,
}

_TEXT = re.compile(r"^\[[^\]]*\] (.*?)(?: \(_ssl\.c:\d+\))?$")


def classify(error: BaseException) -> tuple[HandshakeFailure, str]:
    """(reason, message) for an exception raised by a handshake."""
    if isinstance(error, ssl.SSLCertVerificationError):
        kind = (
            HandshakeFailure.HOSTNAME_MISMATCH
            if error.verify_code == 62
            else HandshakeFailure.UNKNOWN_CA
            if error.verify_code in (2, 19, 20, 21)
            else HandshakeFailure.BAD_CERTIFICATE
        )
        return kind, f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        kind = _BY_OPENSSL_REASON.get(reason, HandshakeFailure.OTHER)
        match = _TEXT.match(str(error))
        text = match.group(1) if match else str(error)
        library = (error.library or "SSL").lower()
        return kind, f"{library} routines: {text}"
    return HandshakeFailure.OTHER, str(error) or type(error).__name__
