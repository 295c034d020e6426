"""The command-line client of the REST API: `tlstrace trace on|off|status`, `tlstrace
connections`, `tlstrace reload`. Standard library HTTP only; the token comes from the file given
with --config (its api_token), else from TLSTRACE_API_TOKEN, as the sidecar takes it; never
from a flag (a flag shows in `ps`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlstrace.config import ConfigError, load_config
from tlstrace.config.endpoint import parse_endpoint
from tlstrace.config.model import MAX_TRACE_SECONDS, api_address
from tlstrace.trace.timer import format_seconds

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


#: the sidecar's API is reached directly, whatever http_proxy says
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClientError(Exception):
    """One line for the user; the command exits 1."""


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1h30m', '1.5h' -> seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or m is None or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 10m, 1h30m)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + s
    if not 0 < seconds <= MAX_TRACE_SECONDS:
        raise ValueError(f"{text!r}: a duration above 0 and at most 30 days is needed")
    return seconds


@dataclass
class Api:
    base: str  # http://HOST:PORT
    token: str | None
    timeout: float = 10.0
    #: where the token came from, for the message when it is refused
    token_source: str = "TLSTRACE_API_TOKEN"

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
        shape: Callable[[Any], bool] | None = None,
    ) -> Any:
        """The decoded JSON answer; a ClientError for anything but the `ok` statuses, and for
        an answer that `shape` (when given) does not accept: not a tlstrace API."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _DIRECT.open(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except http.client.HTTPException as e:  # it answered, but not in HTTP
            raise ClientError(
                f"not a tlstrace API at {self.base}: its answer is not HTTP "
                f"({type(e).__name__}); is --api the address of tlstrace's "
                f"api_listen?"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, OSError) and reason.strerror:
                reason = reason.strerror
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            raise ClientError(
                f"cannot reach the API at {self.base}: {reason} (is tlstrace "
                f"running, and is its api_listen this address? --api HOST:PORT "
                f"chooses another)"
            ) from None
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        if status == 401:
            hint = (
                f"the token in {self.token_source} was refused"
                if self.token
                else "it needs a token: set TLSTRACE_API_TOKEN"
            )
            raise ClientError(f"the API at {self.base} answered 401: {hint}")
        if status not in ok:
            if 200 <= status < 300 or not _is_problem(answer):
                raise ClientError(
                    f"not a tlstrace API at {self.base}: {method} {path} "
                    f"answered {status} {_excerpt(answer)}"
                )
            raise ClientError(f"{method} {path}: {status}: {_detail(answer)}")
        if shape is not None and not shape(answer):
            raise ClientError(
                f"not a tlstrace API at {self.base}: {method} {path} answered {_excerpt(answer)}"
            )
        return answer


def _is_problem(answer: Any) -> bool:
    """Whether an error answer is shaped as the API's (FastAPI's `{"detail": ...}`)."""
    return isinstance(answer, dict) and ("detail" in answer or "message" in answer)


def _excerpt(answer: Any) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    text = " ".join(text.split())
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _is_trace_state(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("tracing") in ("on", "off")


def _is_connection_list(answer: Any) -> bool:
    return isinstance(answer, list) and all(isinstance(r, dict) and "id" in r for r in answer)


def _is_reload_result(answer: Any) -> bool:
    return (
        isinstance(answer, dict)
        and isinstance(answer.get("reloaded"), bool)
        and isinstance(answer.get("message"), str)
    )


def _detail(answer: Any) -> str:
    if isinstance(answer, dict):
        detail = answer.get("detail", answer.get("message", answer))
        if isinstance(detail, list):
            return "; ".join(
                str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail
            )
        return str(detail)
    return str(answer)


def api_from(api: str | None, config_path: Path | None) -> Api:
    """--api (an IP address or a host name), else the file's api_listen, else the default;
    the token as the sidecar takes it: the file's api_token, else TLSTRACE_API_TOKEN."""
    config = load_config(config_path)  # without a file: the defaults; with it, the env token
    source = str(config_path) if config_path else "defaults"
    if api is not None:
        if not api.strip():
            raise ConfigError(
                "--api",
                "api_listen",
                "empty: give HOST:PORT of the sidecar's API (e.g. --api 127.0.0.1:8080)",
            )
        try:
            ep = parse_endpoint(f"tcp:{api.strip()}")
        except ValueError:
            raise ConfigError(
                "--api",
                "api_listen",
                f"{api!r} is not HOST:PORT (an IP address "
                "or a host name, IPv6 in brackets, and the port)",
            ) from None
        host, port = ep.host, ep.port
    else:
        if not config.api_listen:
            raise ConfigError(
                source, "api_listen", "the API is off in this file (give --api HOST:PORT)"
            )
        try:
            host, port = api_address(config.api_listen)
        except ValueError as e:
            raise ConfigError(source, "api_listen", str(e)) from None
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    env = os.environ.get("TLSTRACE_API_TOKEN")
    token = config.api_token
    from_env = bool(env) and token == env
    where = "TLSTRACE_API_TOKEN" if from_env else f"api_token of {config_path}"
    return Api(f"http://{hostport}", token, token_source=where)


# -- the commands ---------------------------------------------------------------------------


def trace(api: Api, action: str, for_text: str | None) -> int:
    if action == "status":
        state = api.call("GET", "/api/trace", shape=_is_trace_state)
    else:
        body: dict[str, Any] = {"tracing": action}
        if for_text is not None:
            body["for_seconds"] = parse_duration(for_text)
        state = api.call("PUT", "/api/trace", body, shape=_is_trace_state)
    print(describe_trace(state))
    return 0


def describe_trace(state: dict[str, Any]) -> str:
    line = f"tracing {state['tracing']}"
    if state.get("until"):
        left = state.get("remaining_seconds")
        line += f" until {state['until']}"
        if left is not None:
            line += f" ({format_seconds(round(float(left)))} left)"
    dests = ", ".join(state.get("destinations") or []) or "none configured"
    line += (
        f"; HEP destinations: {dests}; {state.get('traced_connections', 0)} connection(s) "
        f"traced; {state.get('filter_rules', 0)} filter rule(s)"
    )
    if state.get("keys"):
        line += "; session keys included"
    return line


COLUMNS = [
    ("ID", "id"),
    ("DIR", "direction"),
    ("PROTO", "transport"),
    ("STATE", "state"),
    ("REMOTE", "remote"),
    ("LOCAL", "local"),
    ("SNI", "sni"),
    ("TLS", "tls_version"),
    ("AGE", "age_seconds"),
    ("MSG IN", "messages_in"),
    ("MSG OUT", "messages_out"),
    ("TRACED", "traced"),
]


def connections(
    api: Api, direction: str | None, traced: bool | None, limit: int, as_json: bool
) -> int:
    query = [f"limit={limit}"]
    if direction:
        query.append(f"direction={direction}")
    if traced is not None:
        query.append(f"traced={'true' if traced else 'false'}")
    rows: list[dict[str, Any]] = api.call(
        "GET", "/api/connections?" + "&".join(query), shape=_is_connection_list
    )
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(table(rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if key == "age_seconds":
            return format_seconds(round(float(value)))
        return str(value)

    cells = [[cell(r, key) for _, key in COLUMNS] for r in rows]
    widths = [
        max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _) in enumerate(COLUMNS)
    ]
    lines = ["  ".join(t.ljust(w) for (t, _), w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) for c in cells]
    lines = [line.rstrip() for line in lines]
    lines.append(f"{len(rows)} connection{'' if len(rows) == 1 else 's'}")
    return "\n".join(lines)


def reload(api: Api) -> int:
    result = api.call("POST", "/api/reload", ok=(200, 409), shape=_is_reload_result)
    print(
        result["message"]
        if result["reloaded"]
        else f"reload failed, nothing changed: {result['message']}"
    )
    return 0 if result["reloaded"] else 1


def main(args: Any) -> int:
    try:
        api = api_from(args.api, args.config)
        if args.command == "trace":
            if args.for_ is not None and args.action != "on":
                raise ClientError("--for goes with 'trace on'")
            return trace(api, args.action, args.for_)
        if args.command == "connections":
            return connections(api, args.direction, args.traced, args.limit, args.json)
        return reload(api)
    except (ClientError, ValueError) as e:
        print(f"tlstrace {args.command}: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"tlstrace: configuration error: {e}", file=sys.stderr)
        return 2
