"""Transport endpoints written as `scheme:HOST:PORT` (`tls:[::1]:5061`, `tcp:10.0.0.5:5060`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["tls", "tcp"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: Scheme
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}:{host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_endpoint(text: str, *, default_port: int | None = None) -> Endpoint:
    """Parse `tls:HOST:PORT` or `tcp:HOST:PORT`; IPv6 hosts go in brackets.

    Raises ValueError with a message meant for the operator.
    """
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("tls", "tcp"):
        raise ValueError(f"{text!r} must look like tls:HOST:PORT or tcp:HOST:PORT")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        if tail and not tail.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
        port_text = tail[1:] if tail else ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        if rest.count(":") > 1:
            raise ValueError(f"{text!r}: write IPv6 addresses in brackets, e.g. tls:[::1]:5061")
        host, _, port_text = rest.partition(":")
    if not host:
        raise ValueError(f"{text!r}: the host is empty")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError(f"{text!r}: the port is missing")
    return Endpoint(scheme, host, port)  # type: ignore[arg-type]
