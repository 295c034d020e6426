"""Certificate details for traces, metrics and the API, parsed once per certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

_SHORT = {NameOID.EMAIL_ADDRESS: "emailAddress"}


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str  # OpenSSL X509_NAME_oneline form, e.g. /C=US/O=Acme/CN=sip.example.com
    issuer: str
    serial: str  # hex
    sha256: str  # hex fingerprint of the DER
    not_after: dt.datetime

    def as_dict(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "sha256": self.sha256,
            "not_after": self.not_after.isoformat(),
        }


def oneline(name: x509.Name) -> str:
    """The OpenSSL `X509_NAME_oneline()` rendering OpenSIPS puts in its traces."""
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = _SHORT.get(attr.oid) or attr.rfc4514_attribute_name
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            parts.append(f"/{key}={value}")
    return "".join(parts)


def from_certificate(cert: x509.Certificate) -> CertInfo:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)
    return CertInfo(
        subject=oneline(cert.subject),
        issuer=oneline(cert.issuer),
        serial=format(cert.serial_number, "x"),
        sha256=hashlib.sha256(der).hexdigest(),
        not_after=cert.not_valid_after_utc,
    )


@lru_cache(maxsize=1024)
def from_der(der: bytes) -> CertInfo | None:
    """Parse a peer certificate; cached, since the same peers reconnect."""
    try:
        return from_certificate(x509.load_der_x509_certificate(der))
    except ValueError:
        return None


def from_pem_file(path: str) -> CertInfo:
    with open(path, "rb") as f:
        return from_certificate(x509.load_pem_x509_certificate(f.read()))


def chain_problem(certificate_pem: bytes, chain_pem: bytes | None) -> str | None:
    """What is wrong with the chain sent after a certificate, or None: each certificate must be
    issued (name and signature) by the one that follows it, whether the chain is in the
    certificate's file or in a chain file, and a chain file must hold a certificate. OpenSSL
    sends them as they are, so a wrong chain would only show when a client refuses it. (A
    certificate file without any certificate is left to OpenSSL's own message.)"""
    try:
        certs = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError:
        return None
    if chain_pem is not None:
        try:
            certs += x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            return "the chain file holds no readable PEM certificate"
    for cert, issuer in itertools.pairwise(certs):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError) as e:
            return (
                f"{oneline(cert.subject)} is not issued by the certificate after it, "
                f"{oneline(issuer.subject)} ({e})"
            )
        except InvalidSignature:
            return (
                f"{oneline(cert.subject)} is not signed by the certificate after it, "
                f"{oneline(issuer.subject)}"
            )
    return None
