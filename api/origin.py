"""Host and Origin checks against DNS rebinding and cross-site requests (the outermost
middleware).

A web page on another site cannot read the API's answers, but it can send it requests: through
DNS rebinding (its own name, re-pointed at 127.0.0.1, reaches the API with that name in `Host`)
or a cross-site form POST. So:

- the `Host` header must be an IP literal (IPv4, or IPv6 in brackets), `localhost`, or a name
  listed in `api_allowed_hosts`, with or without a port; anything else gets 421;
- a POST, PUT, PATCH or DELETE whose `Origin` header is present must come from the API's own
  origin (`http://` + the request's `Host`); anything else gets 403.

Requests without `Host` (HTTP/1.0) and without `Origin` (curl, Prometheus, the client) pass.
Starlette's TrustedHostMiddleware is not used: it splits `[::1]:8080` at the first colon.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(text: str) -> tuple[str, int | None] | None:
    """`host[:port]` of a Host header, the host lower-cased (IPv6 without brackets); None
    when it is not one."""
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            return None
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, port_text_ = text.partition(":")
        if sep:
            port_text = port_text_
    if port_text is not None and not (
        port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535
    ):
        return None
    if not host:
        return None
    return host.lower(), int(port_text) if port_text else None


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """An IP literal (IPv6 comes without its brackets), localhost, or a listed name."""
    if ":" in host:
        return True  # split_host let it through as an IPv6 literal
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    name = host.removesuffix(".")
    return name == "localhost" or name in {a.lower().removesuffix(".") for a in allowed}


def same_origin(origin: str, scheme: str, host: tuple[str, int | None]) -> bool:
    """Whether the Origin header names the origin the request was sent to."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() != scheme or parts.hostname is None or parts.path or parts.query:
        return False
    default = DEFAULT_PORTS.get(scheme)
    return parts.hostname.lower() == host[0] and (port or default) == (host[1] or default)


class HostAndOrigin:
    """ASGI middleware: see the module's docstring. `allowed()` is read per request (a reload
    can change `api_allowed_hosts`)."""

    def __init__(self, app: ASGIApp, allowed: Callable[[], Sequence[str]]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        host_text = next((v.decode("latin-1") for k, v in headers if k == b"host"), None)
        host = None if host_text is None else split_host(host_text)
        if host_text is not None and (host is None or not host_allowed(host[0], self.allowed())):
            response = PlainTextResponse(
                "421 Misdirected Request: this API answers requests for its IP address, "
                "localhost, or a name listed in api_allowed_hosts\n",
                status_code=421,
            )
            await response(scope, receive, send)
            return
        if scope["method"] in UNSAFE:
            origin = next((v.decode("latin-1") for k, v in headers if k == b"origin"), None)
            if origin is not None and (
                host is None or not same_origin(origin, str(scope.get("scheme", "http")), host)
            ):
                response = PlainTextResponse(
                    "403 Forbidden: a cross-origin request (its Origin is not this API's)\n",
                    status_code=403,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
