"""Certificate generation with `cryptography`: the self-signed default identity, and small
CAs and leaf certificates for tests, the demo and the benchmark."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_path: Path, key_path: Path, chain: list[Issued] | None = None) -> None:
        """Write the certificate (followed by `chain`) and the key; the key file is 0600."""
        pem = self.cert_pem() + b"".join(c.cert_pem() for c in chain or [])
        cert_path.write_bytes(pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem())


def new_key(kind: str = "ec") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_ca(
    cn: str = "tlstrace test CA",
    org: str | None = "tlstrace",
    kind: str = "ec",
    issuer: Issued | None = None,
) -> Issued:
    """A root CA, or with `issuer` an intermediate CA signed by it."""
    key = new_key(kind)
    now = dt.datetime.now(dt.UTC)
    name = _name(cn, org)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer.key if issuer else key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    cn: str,
    *,
    issuer: Issued | None = None,
    names: list[str] | None = None,
    org: str | None = None,
    kind: str = "ec",
    days: float = 825,
    client: bool = False,
) -> Issued:
    """A leaf certificate for `cn` (and `names` as SANs), signed by `issuer` or self-signed."""
    key = new_key(kind)
    now = dt.datetime.now(dt.UTC)
    subject = _name(cn, org)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage[1:] if client else usage), critical=False)
        .add_extension(_san(names if names is not None else [cn]), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(cert, key)


def self_signed_paths(state_dir: Path) -> tuple[Path, Path]:
    """Where the default identity lives: (cert, key)."""
    return state_dir / "default-cert.pem", state_dir / "default-key.pem"


def ensure_self_signed(state_dir: Path, names: list[str]) -> tuple[Path, Path, bool]:
    """Return (cert, key, created): the default identity kept in `state_dir`, made on first use."""
    cert_path, key_path = self_signed_paths(state_dir)
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path, False
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    issued = issue(names[0], names=names, org="tlstrace self-signed", days=3650)
    issued.write(cert_path, key_path)
    return cert_path, key_path, True
