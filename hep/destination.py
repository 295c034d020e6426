"""HEP destinations written as OpenSIPS `hep_id`s.

    [name]host[:port][;transport=udp|tcp|tls][;version=3]

- `name` comes first, in brackets. An IPv6 host then gets its own brackets:
  `[homer][2001:db8::1]:9060`. `parse_hep_id` requires the name, as OpenSIPS does: the first
  bracket pair is always the name, so `[::1]:9060` is refused there (a destination named "::1"
  with no host). tlstrace's configuration and `--hep` also take a destination without a name
  (`10.0.0.5:9060`, `[::1]:9060`): `with_names` names it hep1, hep2, ... first.
- `host` is a name (resolved when connecting), an IPv4 address, or an IPv6 address in
  brackets. The port defaults to 9060.
- Parameters may come in any order, with optional spaces around `;` and `=`. The keys are
  case-sensitive, the transport value is not. Only version 3 is accepted.
- The transport defaults to **udp** (Homer's default ingest: heplify-server listens on UDP
  9060, TCP and TLS are off unless configured). OpenSIPS's `hep_id` defaults to **tcp**:
  write `;transport=tcp` to copy an OpenSIPS setting exactly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from hep.address import join_host_port, split_host_port

Transport = Literal["udp", "tcp", "tls"]
DEFAULT_PORT = 9060
DEFAULT_TRANSPORT: Transport = "udp"
_TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class HepDestination:
    """Where to send HEP: a named collector address and its transport."""

    name: str
    host: str
    port: int = DEFAULT_PORT
    transport: Transport = DEFAULT_TRANSPORT
    version: int = 3

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "[]") or self.name != self.name.strip():
            raise ValueError(
                f"destination name {self.name!r} must be non-empty, without "
                "brackets or surrounding spaces"
            )
        if not self.host:
            raise ValueError(f"destination {self.name!r}: the host is empty")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"destination {self.name!r}: port {self.port!r} is not 1..65535")
        if self.transport not in _TRANSPORTS:
            raise ValueError(
                f"destination {self.name!r}: transport {self.transport!r} is not udp, tcp or tls"
            )
        if self.version != 3:
            raise ValueError(
                f"destination {self.name!r}: only HEP version 3 is supported, not {self.version!r}"
            )

    @property
    def address(self) -> str:
        """`host:port`, with an IPv6 host in brackets."""
        return join_host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.name}]{self.address};transport={self.transport};version={self.version}"


def parse_hep_id(text: str) -> HepDestination:
    """Parse one `hep_id` (see the module docstring). Raises ValueError naming the problem."""
    s = text.strip()
    if not s.startswith("["):
        raise ValueError(
            f"hep_id {text!r} must start with the destination name in brackets, "
            "e.g. [homer]10.0.0.5:9060;transport=udp"
        )
    name, bracket, rest = s[1:].partition("]")
    if not bracket:
        raise ValueError(f"hep_id {text!r}: missing ']' after the destination name")
    name = name.strip()
    if not name:
        raise ValueError(f"hep_id {text!r}: the destination name is empty")
    addr, *params = rest.split(";")
    addr = addr.strip()
    if not addr or (addr.startswith(":") and addr.count(":") == 1):
        hint = ""
        try:
            ipaddress.IPv6Address(name)
            hint = f": [{name}] is read as the name; write [name][{name}]{addr or ':9060'}"
        except ValueError:
            pass
        raise ValueError(f"hep_id {text!r}: the host is missing{hint}")
    host, port = _host_port(text, addr)
    values: dict[str, str] = {}
    for param in params:
        if not param.strip():
            continue
        key, eq, value = param.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise ValueError(f"hep_id {text!r}: parameter {param.strip()!r} must be key=value")
        if key not in ("transport", "version"):
            raise ValueError(
                f"hep_id {text!r}: unknown parameter {key!r} "
                "(transport and version are known; keys are case-sensitive)"
            )
        if key in values:
            raise ValueError(f"hep_id {text!r}: {key} is given twice")
        values[key] = value
    transport = values.get("transport", DEFAULT_TRANSPORT).lower()
    if transport not in _TRANSPORTS:
        raise ValueError(
            f"hep_id {text!r}: transport {values['transport']!r} is not udp, tcp or tls"
        )
    version_text = values.get("version", "3")
    if version_text != "3":
        raise ValueError(
            f"hep_id {text!r}: version {version_text!r}: only HEP version 3 is supported"
        )
    return HepDestination(name, host, port, transport, 3)


def _host_port(text: str, addr: str) -> tuple[str, int]:
    try:
        host, port_text = split_host_port(addr, "[homer][2001:db8::1]:9060")
    except ValueError as e:
        raise ValueError(f"hep_id {text!r}: {e}") from None
    if addr.startswith("["):
        host = str(ipaddress.IPv6Address(host))
    elif not host or any(c.isspace() for c in host):
        raise ValueError(f"hep_id {text!r}: bad host {host!r}")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"hep_id {text!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def has_name(text: str) -> bool:
    """Whether a `hep_id` starts with its `[name]` (`[::1]:9060` is an unnamed IPv6 host)."""
    s = text.strip()
    if not s.startswith("["):
        return False
    try:
        ipaddress.IPv6Address(s[1:].split("]", 1)[0])
    except ValueError:
        return True
    return False


def with_names(texts: Iterable[str]) -> list[str]:
    """The `hep_id`s with a name in front of those written without one: hep1, hep2, ... in
    order, skipping names the others use (tlstrace accepts both forms; OpenSIPS wants the
    name)."""
    texts = list(texts)
    taken = {t.strip()[1:].split("]", 1)[0].strip() for t in texts if has_name(t)}
    out, n = [], 0
    for t in texts:
        if not has_name(t):
            n += 1
            while f"hep{n}" in taken:
                n += 1
            t = f"[hep{n}]{t.strip()}"
        out.append(t)
    return out


def parse_hep_ids(texts: Iterable[str]) -> list[HepDestination]:
    """Parse several `hep_id`s; a name used twice is an error (as in OpenSIPS)."""
    out: list[HepDestination] = []
    seen: set[str] = set()
    for t in texts:
        d = parse_hep_id(t)
        if d.name in seen:
            raise ValueError(f"hep_id {t!r}: the name {d.name!r} is used twice")
        seen.add(d.name)
        out.append(d)
    return out
