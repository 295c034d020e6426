"""What the sidecar builds from its configuration before it opens any socket.

`tlstrace run` and `tlstrace check` both call `prepare`: the server contexts of every tls:
listener and the client contexts of every client domain (files readable, certificates parse and
match their keys, chains and CA bundles load, cipher lists select something), and the HEP
senders (the collectors' CA bundle). Any problem is a `ConfigError` naming the file and key.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from hep.destination import HepDestination, parse_hep_ids
from hep.sender import HepSender, HepSenderGroup
from tlstrace.config import Config, ConfigError
from tlstrace.tls.contexts import ClientContexts, ServerContexts, build_server_contexts


@dataclass
class Prepared:
    #: the server contexts of each tls: listener, by its `listen` text
    server: dict[str, ServerContexts]
    client: ClientContexts
    senders: HepSenderGroup


def prepare(config: Config, source: str) -> Prepared:
    server = {str(li.listen): build_server_contexts(config, li, source)
              for li in config.listener if li.listen.scheme == "tls"}
    return Prepared(server, ClientContexts(config, source), build_senders(config, source))


def trace_destinations(config: Config) -> list[HepDestination]:
    """The destinations traced to (all hep_id destinations when none is named)."""
    dests = parse_hep_ids(config.hep_id)
    wanted = set(config.trace_destination) or {d.name for d in dests}
    return [d for d in dests if d.name in wanted]


def sender_for(config: Config, dest: HepDestination, source: str = "defaults") -> HepSender:
    """The sender of one destination; a bad hep_ca_list is a ConfigError."""
    try:
        return HepSender(dest, ca_file=config.hep_ca_list, verify=config.hep_verify_cert)
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(source, "hep_ca_list",
                          f"{config.hep_ca_list}: not a readable PEM CA bundle ({reason})") \
            from None


def build_senders(config: Config, source: str = "defaults") -> HepSenderGroup:
    """HEP senders for the trace destinations."""
    return HepSenderGroup(sender_for(config, d, source) for d in trace_destinations(config))
