"""Transport endpoints written as `scheme:HOST:PORT` (`tls:[::1]:5061`, `tcp:10.0.0.5:5060`,
`wss:0.0.0.0:8443`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from hep.address import join_host_port, split_host_port

Scheme = Literal["tls", "tcp", "wss", "ws"]
#: schemes that take SIP over WebSocket (listeners only)
WS_SCHEMES = ("wss", "ws")


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: Scheme
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}:{join_host_port(self.host, self.port)}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_endpoint(text: str, *, default_port: int | None = None) -> Endpoint:
    """Parse `tls:HOST:PORT`, `tcp:HOST:PORT`, `wss:HOST:PORT` or `ws:HOST:PORT`; IPv6 hosts go
    in brackets.

    Raises ValueError with a message meant for the operator.
    """
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in ("tls", "tcp", *WS_SCHEMES):
        raise ValueError(
            f"{text!r} must look like tls:HOST:PORT, tcp:HOST:PORT, wss:HOST:PORT or ws:HOST:PORT"
        )
    try:
        host, port_text = split_host_port(rest, "tls:[::1]:5061")
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    if not host:
        raise ValueError(f"{text!r}: the host is empty")
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError(f"{text!r}: the port is missing")
    return Endpoint(scheme, host, port)  # type: ignore[arg-type]
