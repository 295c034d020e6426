"""`HOST:PORT` with IPv6 hosts in brackets, both ways: the one parser and formatter of addresses
that `hep_id`s, `hep-listen` addresses and tlstrace's endpoints share."""

from __future__ import annotations

import ipaddress


def join_host_port(host: str, port: int) -> str:
    """`10.0.0.5:5061`, `[::1]:5061`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(addr: str, ipv6_example: str) -> tuple[str, str | None]:
    """Split `HOST[:PORT]` or `[IPV6][:PORT]` into the host and the port's text (None when
    there is no port). The host is not checked beyond being an IPv6 address in brackets; the
    port not at all. Raises ValueError saying what is wrong; `ipv6_example` shows the
    caller's own form with brackets."""
    if addr.startswith("["):
        host, bracket, tail = addr[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if tail and not tail.startswith(":"):
            raise ValueError(f"expected ':PORT' after ']', got {tail!r}")
        return host, tail[1:] if tail else None
    if addr.count(":") > 1:
        raise ValueError(f"write an IPv6 host in brackets, e.g. {ipv6_example}")
    host, colon, port = addr.partition(":")
    return host, port if colon else None
