"""SSL contexts built from the configuration: server domains chosen by SNI, client domains.

A listener gets its own set of server contexts. The domain is the first whose
`match_sip_domain` globs match the SNI (exact names first, then wildcards, then "*", as
OpenSIPS's tls_mgm does); with no SNI, the one that matches "none" or "*". A name nothing
matches is refused with an unrecognized_name alert.

Domains are isolated: the relay reads the SNI from the ClientHello itself (tls/clienthello.py)
and starts the handshake on that domain's context (`select`), so each domain has its own
OpenSSL session cache, its own ticket keys and its own client-certificate policy, and a session
resumes only in the domain that created it. Switching contexts in OpenSSL's SNI callback would
not do: OpenSSL looks the session up (and decrypts the ticket) on the context the handshake
began on, before the callback runs, so a session taken on one domain would resume on another
without its certificate checks. The callback therefore never switches: it refuses a name that
belongs to another domain than the one chosen (`sni_mismatch`, when OpenSSL reads a hello
differently from tlstrace) and unknown names.
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
from tlstrace.tls import certgen, certinfo, groups
from tlstrace.tls.sni import SNI_SEEN

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
        #: one domain that takes any name: nothing to choose, only the name to note
        self.single = len(identities) == 1 and "*" in identities[0].domain.match_sip_domain
        for ident in identities:
            ident.context.sni_callback = _note_sni if self.single else self._on_sni

    def _match(self, server_name: str | None) -> ServerIdentity | None:
        for pattern, ident in self._patterns:
            if server_name is None:
                if pattern in ("*", "none"):
                    return ident
            elif pattern != "none" and fnmatch.fnmatchcase(server_name.lower(), pattern):
                return ident
        return None

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context a handshake with this SNI starts on (read from the ClientHello). A name
        no domain takes starts on the initial one, whose SNI callback then refuses it."""
        ident = self._match(server_name)
        return self.initial if ident is None else ident.context

    def _on_sni(
        self, obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        ident = self._match(server_name)
        # (read by the TLS session: tls/sni.py)
        SNI_SEEN.note(obj, server_name, ident is not None and ident.context is not ctx)
        if ident is None:
            if server_name is None:
                return None  # no SNI and no domain for it: continue on the initial one
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if ident.context is not ctx:
            # never switch (see the module's docstring): the session, if any, was already
            # taken from `ctx`'s cache
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    def identity_of(self, ctx: ssl.SSLContext) -> ServerIdentity | None:
        return self._by_context.get(id(ctx))


def _note_sni(
    obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
) -> None:
    SNI_SEEN.note(obj, server_name)  # read by the TLS session (tls/sni.py)


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
            ctx = self._cache[domain.name] = build_client_context(
                domain, "client_domain", self._source
            )
        return ctx

    def domain(self, name: str | None) -> ClientDomain:
        return self._config.client_domain_named(name)

    def cert_info(self, name: str | None) -> certinfo.CertInfo | None:
        """Our client certificate in this domain, if it has one."""
        domain = self.domain(name)
        if domain.name not in self._certs:
            self._certs[domain.name] = (
                certinfo.from_pem_file(str(domain.certificate)) if domain.certificate else None
            )
        return self._certs[domain.name]

    def contexts(self) -> list[ssl.SSLContext]:
        return list(self._cache.values())


def build_server_contexts(config: Config, listener: Listener, source: str) -> ServerContexts:
    identities = []
    for domain in config.server_domains_for(listener):
        key = f"server_domain[{config.server_domain.index(domain)}]"
        identities.append(build_server_identity(config, domain, key, source))
    return ServerContexts(identities)


def build_server_identity(
    config: Config, domain: ServerDomain, key: str, source: str
) -> ServerIdentity:
    cert_file, key_file = domain.certificate, domain.private_key
    if cert_file is None or key_file is None:
        try:
            cert_file, key_file, created = certgen.ensure_self_signed(
                config.state_dir, ["localhost", socket.gethostname(), "127.0.0.1", "::1"]
            )
        except OSError as e:
            raise state_dir_error(config, source, e.strerror or str(e)) from None
        if created:
            log.info("generated a self-signed certificate %s (key %s)", cert_file, key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_common(ctx, domain.min_version, domain.max_version, domain.ciphers_list, key, source)
    groups.apply(ctx, domain.groups, lambda why: ConfigError(source, f"{key}.groups", why))
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


def state_dir_error(config: Config, source: str, reason: str) -> ConfigError:
    return ConfigError(
        source,
        "state_dir",
        f"{config.state_dir}: cannot create the self-signed certificate there: {reason}",
    )


def build_client_context(domain: ClientDomain, key: str, source: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_common(ctx, domain.min_version, domain.max_version, domain.ciphers_list, key, source)
    groups.apply(ctx, domain.groups, lambda why: ConfigError(source, f"{key}.groups", why))
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


def _apply_common(
    ctx: ssl.SSLContext, min_v: str, max_v: str, ciphers: str | None, key: str, source: str
) -> None:
    ctx.minimum_version = _VERSIONS[min_v]
    ctx.maximum_version = _VERSIONS[max_v]
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(
                source, f"{key}.ciphers_list", f"{ciphers!r} selects no cipher OpenSSL knows"
            ) from None


def _load_chain(
    ctx: ssl.SSLContext, cert: Path, key_file: Path, chain: Path | None, key: str, source: str
) -> None:
    for name, path in (("certificate", cert), ("private_key", key_file), ("chain", chain)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(source, f"{key}.{name}", f"{path}: missing or not readable")
    certfile = str(cert)
    tmp = None
    try:
        problem = certinfo.chain_problem(
            Path(cert).read_bytes(), Path(chain).read_bytes() if chain is not None else None
        )
    except OSError as e:
        raise ConfigError(source, f"{key}.certificate", f"{e.filename}: {e.strerror}") from None
    if problem is not None:
        raise ConfigError(
            source,
            f"{key}.chain" if chain is not None else f"{key}.certificate",
            f"{chain or cert}: {problem}",
        )
    if chain is not None:
        # OpenSSL reads the chain from the certificate file: join them in a private temp file
        tmp = tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False)  # noqa: SIM115
        with tmp:
            tmp.write(Path(cert).read_bytes().rstrip(b"\n") + b"\n" + Path(chain).read_bytes())
        certfile = tmp.name
    try:
        ctx.load_cert_chain(certfile, str(key_file))
    except ssl.SSLError as e:
        what = (
            "private_key"
            if "KEY_VALUES_MISMATCH" in str(e) or "PEM_LIB" in str(e)
            else "certificate"
        )
        raise ConfigError(
            source, f"{key}.{what}", f"OpenSSL cannot load {cert} with {key_file}: {e.reason or e}"
        ) from None
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
