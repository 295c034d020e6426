"""Which connections are traced: ordered allow/deny rules (the analogue of OpenSIPS's
`trace_filter_route`), evaluated once per connection when its handshake ends. Sans-IO."""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tlstrace.config.model import TraceRule

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rule can look at."""

    direction: Literal["inbound", "outbound"]
    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int
    sni: str | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    allow: bool
    remote: Network | None
    remote_port: int | None
    local: Network | None
    local_port: int | None
    sni: str | None
    direction: str | None


class TraceFilter:
    def __init__(self, rules: Sequence[TraceRule], default: Literal["allow", "deny"] = "allow"):
        self.rules = list(rules)
        self.default = default
        self._compiled = [
            _Compiled(
                r.action == "allow",
                ipaddress.ip_network(r.remote, strict=False) if r.remote else None,
                r.remote_port,
                ipaddress.ip_network(r.local, strict=False) if r.local else None,
                r.local_port,
                r.sni.lower() if r.sni else None,
                r.direction,
            )
            for r in rules
        ]

    def allows(self, f: Facts) -> bool:
        remote = normalize_ip(f.remote_ip)
        local = normalize_ip(f.local_ip)
        for r in self._compiled:
            if r.direction is not None and r.direction != f.direction:
                continue
            if r.remote_port is not None and r.remote_port != f.remote_port:
                continue
            if r.local_port is not None and r.local_port != f.local_port:
                continue
            if r.remote is not None and not _within(remote, r.remote):
                continue
            if r.local is not None and not _within(local, r.local):
                continue
            if r.sni is not None and not _sni_matches(r.sni, f.sni):
                continue
            return r.allow
        return self.default == "allow"


def normalize_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address without its %scope, IPv4-mapped IPv6 as IPv4; None when not an IP."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, net: Network) -> bool:
    return addr is not None and addr.version == net.version and addr in net


def _sni_matches(pattern: str, sni: str | None) -> bool:
    if sni is None:
        return pattern in ("none", "*")
    return pattern != "none" and fnmatch.fnmatchcase(sni.lower(), pattern)
