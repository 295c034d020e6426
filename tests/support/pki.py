"""A throw-away PKI for one test session: CAs, server and client certificates on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlstrace.tls.certgen import Issued, issue, make_ca


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    issued: Issued


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = make_ca("tlstrace test CA")
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem())
        self.other_ca = make_ca("untrusted CA", org="elsewhere")
        self.other_ca_file = root / "other-ca.pem"
        self.other_ca_file.write_bytes(self.other_ca.cert_pem())

    def leaf(
        self,
        cn: str,
        *,
        names: list[str] | None = None,
        client: bool = False,
        untrusted: bool = False,
        kind: str = "ec",
        days: float = 30,
        tag: str | None = None,
    ) -> CertFiles:
        issuer = self.other_ca if untrusted else self.ca
        issued = issue(
            cn,
            issuer=issuer,
            names=names,
            client=client,
            kind=kind,
            days=days,
            org="tlstrace tests",
        )
        stem = tag or cn.replace("*", "star")
        cert, key = self.root / f"{stem}.crt", self.root / f"{stem}.key"
        issued.write(cert, key)
        return CertFiles(cert, key, issued)
