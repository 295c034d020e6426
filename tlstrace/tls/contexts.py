"""SSL contexts built from the configuration: server domains chosen by SNI, client domains.

A listener gets its own set of server contexts. The handshake starts on the context of the
domain that matches "no SNI"; the SNI callback switches to the first domain whose
`match_sip_domain` globs match the name (exact names first, then wildcards, then "*", as
OpenSIPS's tls_mgm does). A name nothing matches is refused with an unrecognized_name alert.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlstrace.config import ClientDomain, Config, ConfigError, Listener, ServerDomain
from tlstrace.tls import certgen, certinfo

log = logging.getLogger("tlstrace.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"off": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class ServerIdentity:
    domain: ServerDomain
    context: ssl.SSLContext
    cert_file: Path
    cert: certinfo.CertInfo


class ServerContexts:
    """The server side of one tls: listener."""

    def __init__(self, identities: list[ServerIdentity]) -> None:
        self.identities = identities
        ordered = sorted(
            ((pat.lower(), ident) for ident in identities for pat in ident.domain.match_sip_domain),
            key=lambda item: 2 if item[0] == "*" else 1 if any(c in item[0] for c in "*?[") else 0,
        )
        self._patterns = ordered
        no_sni = self._match(None)
        self.initial = (no_sni or identities[0]).context
        self._by_context = {id(i.context): i for i in identities}
        # one domain that takes any name: nothing to choose, only the name to note
        only_any = len(identities) == 1 and "*" in identities[0].domain.match_sip_domain
        for ident in identities:
            ident.context.sni_callback = _note_sni if only_any else self._on_sni

    def _match(self, server_name: str | None) -> ServerIdentity | None:
        for pattern, ident in self._patterns:
            if server_name is None:
                if pattern in ("*", "none"):
                    return ident
            elif pattern != "none" and fnmatch.fnmatchcase(server_name.lower(), pattern):
                return ident
        return None

    def _on_sni(self, obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                ctx: ssl.SSLContext) -> int | None:
        obj.tlstrace_sni = server_name  # type: ignore[union-attr]  # read by the TLS leg
        ident = self._match(server_name)
        if ident is None:
            if server_name is None:
                return None  # no SNI and no domain for it: continue on the initial one
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if ident.context is not ctx:
            obj.context = ident.context
        return None

    def identity_of(self, ctx: ssl.SSLContext) -> ServerIdentity | None:
        return self._by_context.get(id(ctx))


def _note_sni(obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
              ctx: ssl.SSLContext) -> None:
    obj.tlstrace_sni = server_name  # type: ignore[union-attr]  # read by the TLS leg


class ClientContexts:
    """Client contexts by client-domain name, built on first use and kept."""

    def __init__(self, config: Config, source: str) -> None:
        self._config = config
        self._source = source
        self._cache: dict[str, ssl.SSLContext] = {}
        self._certs: dict[str, certinfo.CertInfo | None] = {}
        # build every configured one now, so a bad file stops start-up
        for i, domain in enumerate(config.client_domain):
            self._cache[domain.name] = build_client_context(domain, f"client_domain[{i}]", source)

    def get(self, name: str | None) -> ssl.SSLContext:
        domain = self._config.client_domain_named(name)
        ctx = self._cache.get(domain.name)
        if ctx is None:
            ctx = self._cache[domain.name] = build_client_context(domain, "client_domain",
                                                                  self._source)
        return ctx

    def domain(self, name: str | None) -> ClientDomain:
        return self._config.client_domain_named(name)

    def cert_info(self, name: str | None) -> certinfo.CertInfo | None:
        """Our client certificate in this domain, if it has one."""
        domain = self.domain(name)
        if domain.name not in self._certs:
            self._certs[domain.name] = (certinfo.from_pem_file(str(domain.certificate))
                                        if domain.certificate else None)
        return self._certs[domain.name]

    def contexts(self) -> list[ssl.SSLContext]:
        return list(self._cache.values())


def build_server_contexts(config: Config, listener: Listener, source: str) -> ServerContexts:
    identities = []
    for domain in config.server_domains_for(listener):
        key = f"server_domain[{config.server_domain.index(domain)}]"
        identities.append(build_server_identity(config, domain, key, source))
    return ServerContexts(identities)


def build_server_identity(config: Config, domain: ServerDomain, key: str,
                          source: str) -> ServerIdentity:
    cert_file, key_file = domain.certificate, domain.private_key
    if cert_file is None or key_file is None:
        cert_file, key_file, created = certgen.ensure_self_signed(
            config.state_dir, ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
        )
        if created:
            log.info("generated a self-signed certificate %s (key %s)", cert_file, key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_common(ctx, domain.min_version, domain.max_version, domain.ciphers_list, key, source)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # client-initiated renegotiation is answered with a no_renegotiation alert (OpenSSL 3's
    # default; explicit for older ones): a renegotiation would be a full handshake on demand
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.num_tickets = domain.session_tickets
    if not domain.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
    _load_chain(ctx, cert_file, key_file, domain.chain, key, source)
    ctx.verify_mode = _VERIFY[domain.client_cert]
    if domain.ca_list is not None:
        _load_ca(ctx, domain.ca_list, f"{key}.ca_list", source)
    try:
        info = certinfo.from_pem_file(str(cert_file))
    except ValueError as e:
        raise ConfigError(source, f"{key}.certificate", f"{cert_file}: {e}") from None
    return ServerIdentity(domain, ctx, Path(cert_file), info)


def build_client_context(domain: ClientDomain, key: str, source: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_common(ctx, domain.min_version, domain.max_version, domain.ciphers_list, key, source)
    if domain.verify_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if domain.ca_list is not None:
            _load_ca(ctx, domain.ca_list, f"{key}.ca_list", source)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if domain.certificate is not None and domain.private_key is not None:
        _load_chain(ctx, domain.certificate, domain.private_key, domain.chain, key, source)
    return ctx


def _apply_common(ctx: ssl.SSLContext, min_v: str, max_v: str, ciphers: str | None, key: str,
                  source: str) -> None:
    ctx.minimum_version = _VERSIONS[min_v]
    ctx.maximum_version = _VERSIONS[max_v]
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(source, f"{key}.ciphers_list",
                              f"{ciphers!r} selects no cipher OpenSSL knows") from None


def _load_chain(ctx: ssl.SSLContext, cert: Path, key_file: Path, chain: Path | None, key: str,
                source: str) -> None:
    for name, path in (("certificate", cert), ("private_key", key_file), ("chain", chain)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(source, f"{key}.{name}", f"{path}: missing or not readable")
    certfile = str(cert)
    tmp = None
    if chain is not None:
        # OpenSSL reads the chain from the certificate file: join them in a private temp file
        tmp = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)  # noqa: SIM115
        with tmp:
            tmp.write(Path(cert).read_bytes().rstrip(b"\n") + b"\n" + Path(chain).read_bytes())
        certfile = tmp.name
    try:
        ctx.load_cert_chain(certfile, str(key_file))
    except ssl.SSLError as e:
        what = "private_key" if "KEY_VALUES_MISMATCH" in str(e) or "PEM_LIB" in str(e) \
            else "certificate"
        raise ConfigError(source, f"{key}.{what}",
                          f"OpenSSL cannot load {cert} with {key_file}: {e.reason or e}") from None
    except OSError as e:
        raise ConfigError(source, f"{key}.certificate", f"{e.filename}: {e.strerror}") from None
    finally:
        if tmp is not None:
            os.unlink(tmp.name)


def _load_ca(ctx: ssl.SSLContext, path: Path, key: str, source: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(source, key, f"{path}: not a readable PEM CA bundle ({e})") from None
