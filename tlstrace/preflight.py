"""What the sidecar builds from its configuration before it opens any socket.

`tlstrace run` and `tlstrace check` both call `prepare`: the server contexts of every tls:
listener and the client contexts of every client domain (files readable, certificates parse and
match their keys, chains and CA bundles load, cipher lists select something), and the HEP
senders (the collectors' CA bundle), and what would fail at start-up or later: two sockets on
one address (listeners, api_listen), a keylog_file that cannot be written. Any problem is a
`ConfigError` naming the file and key. `warnings` lists what works but is likely a mistake:
`check` prints it, `run` logs it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hep.destination import HepDestination, parse_hep_ids
from hep.sender import HepSender, HepSenderGroup, client_context
from tlstrace.config import Config, ConfigError
from tlstrace.config.model import DEFAULT_GROUPS
from tlstrace.tls import groups
from tlstrace.tls.contexts import ClientContexts, ServerContexts, build_server_contexts


@dataclass
class Prepared:
    #: the server contexts of each tls: listener, by its `listen` text
    server: dict[str, ServerContexts]
    client: ClientContexts
    senders: HepSenderGroup


#: a certificate that expires within this many days is warned about
EXPIRY_WARNING_DAYS = 14


def prepare(config: Config, source: str) -> Prepared:
    check_addresses(config, source)
    check_keylog_file(config, source)
    server = {
        str(li.listen): build_server_contexts(config, li, source)
        for li in config.listener
        if li.listen.scheme != "tcp"  # tls:, wss:, ws: (unused on ws:)
    }
    return Prepared(server, ClientContexts(config, source), build_senders(config, source))


def trace_destinations(config: Config) -> list[HepDestination]:
    """The destinations traced to (all hep_id destinations when none is named)."""
    dests = parse_hep_ids(config.hep_id)
    wanted = set(config.trace_destination) or {d.name for d in dests}
    return [d for d in dests if d.name in wanted]


def sender_for(config: Config, dest: HepDestination, source: str = "defaults") -> HepSender:
    """The sender of one destination; a bad hep_ca_list is a ConfigError. Over TLS it offers
    tlstrace's default key-exchange groups (`DEFAULT_GROUPS`, no finite-field group), not
    OpenSSL's list: a collector, or whoever is in the path when hep_verify_cert is off, could
    otherwise pick ffdhe8192 and make each reconnect cost hundreds of milliseconds of CPU."""
    try:
        ctx = None
        if dest.transport == "tls":
            ctx = client_context(config.hep_ca_list, config.hep_verify_cert)
            groups.apply(ctx, DEFAULT_GROUPS, lambda why: ConfigError(source, "hep_id", why))
        return HepSender(
            dest, ca_file=config.hep_ca_list, verify=config.hep_verify_cert, ssl_context=ctx
        )
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(
            source, "hep_ca_list", f"{config.hep_ca_list}: not a readable PEM CA bundle ({reason})"
        ) from None


def build_senders(config: Config, source: str = "defaults") -> HepSenderGroup:
    """HEP senders for the trace destinations."""
    return HepSenderGroup(sender_for(config, d, source) for d in trace_destinations(config))


def check_addresses(config: Config, source: str) -> None:
    """No two listening sockets (listeners, the API) on the same address and port; a wildcard
    address (0.0.0.0, ::) takes the port on every address of its family."""
    taken: list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    wanted = [
        (f"listener[{i}].listen", li.listen.host, li.listen.port)
        for i, li in enumerate(config.listener)
    ]
    if config.api_address is not None:
        wanted.append(("api_listen", *config.api_address))
    for key, host, port in wanted:
        ip = ipaddress.ip_address(host)
        for other, other_ip, other_port in taken:
            if (
                port == other_port
                and ip.version == other_ip.version
                and (ip == other_ip or ip.is_unspecified or other_ip.is_unspecified)
            ):
                where = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
                raise ConfigError(
                    source,
                    key,
                    f"{where} is also the address of {other}: two "
                    "sockets cannot listen on one address",
                )
        taken.append((key, ip, port))


def check_keylog_file(config: Config, source: str) -> None:
    """keylog_file can be created or appended to (its directory exists and is writable)."""
    path = config.keylog_file
    if path is None:
        return
    parent = path.parent
    problem: str | None
    if path.is_dir():
        problem = "is a directory"
    elif path.exists():
        problem = None if os.access(path, os.W_OK) else "not writable"
    elif not parent.exists():
        problem = f"its directory {parent} does not exist"
    elif not parent.is_dir():
        problem = f"{parent} is not a directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = f"its directory {parent} is not writable"
    else:
        problem = None
    if problem is not None:
        raise ConfigError(source, "keylog_file", f"{path}: {problem}")


def warnings(config: Config, source: str, now: datetime.datetime | None = None) -> list[str]:
    """What works but is likely a mistake, one line each naming the file and the key."""
    out: list[str] = []
    now = now or datetime.datetime.now(datetime.UTC)
    domains = [(f"server_domain[{i}]", d.certificate) for i, d in enumerate(config.server_domain)]
    domains += [(f"client_domain[{i}]", d.certificate) for i, d in enumerate(config.client_domain)]
    for key, cert in domains:
        if cert is not None:
            problem = _expiry(cert, now)
            if problem:
                out.append(f"{source}: {key}.certificate: {cert} {problem}")
    address = config.api_address
    if (
        address is not None
        and not config.api_token
        and not ipaddress.ip_address(address[0]).is_loopback
    ):
        out.append(
            f"{source}: api_listen: the API listens on {config.api_listen} without a "
            "token: anyone who can reach it can switch tracing and close connections; "
            "set api_token or TLSTRACE_API_TOKEN"
        )
    if config.trace_on_for_seconds and not config.trace_on:
        out.append(f"{source}: trace_on_for_seconds: has no effect without trace_on = true")
    if config.trace_on and not trace_destinations(config):
        out.append(f"{source}: trace_on: no hep_id destination is configured: nothing is traced")
    return out


def _expiry(cert: Path, now: datetime.datetime) -> str | None:
    """'expired on ...' or 'expires on ...' when within EXPIRY_WARNING_DAYS, else None."""
    try:
        first = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None  # prepare() reports an unreadable certificate
    until = first.not_valid_after_utc
    when = until.strftime("%Y-%m-%d %H:%M:%S UTC")
    if until <= now:
        return f"expired on {when}"
    if until - now <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        days = (until - now).total_seconds() / 86400
        return f"expires on {when} (in {days:.1f} days)"
    return None
