"""Read the TOML file and the command-line overrides into one validated `Config`.

Any problem becomes a `ConfigError` naming where (file or flag), which key, and what is wrong.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tlstrace.config.endpoint import parse_endpoint
from tlstrace.config.model import DEFAULT_LISTENER, Config

_KEY = re.compile(r"[A-Za-z_\[][\w.\[\]]*")


class ConfigError(Exception):
    """A configuration problem: `source` is a file path or a flag, `key` the offending key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


@dataclass
class Overrides:
    """Command-line flags that override the file."""

    listen: Sequence[str] = ()
    backend: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    state_dir: Path | None = None
    log_level: str | None = None
    log_format: str | None = None
    hep: Sequence[str] = ()
    trace: bool = False
    trace_keys: bool = False
    api: str | None = None
    workers: str | None = None


def load_config(path: Path | None = None, overrides: Overrides | None = None) -> Config:
    source = str(path) if path else "defaults"
    data: dict[str, Any] = {}
    token = os.environ.get("TLSTRACE_API_TOKEN")
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(source, "--config", "file not found") from None
        except PermissionError:
            raise ConfigError(source, "--config", "file not readable") from None
        except OSError as e:  # a directory, a dangling link loop, an I/O error
            raise ConfigError("--config", source, e.strerror or str(e)) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(source, "(syntax)", f"not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(source, "(syntax)", "not UTF-8 text") from None
    if overrides is not None:
        data = _apply_overrides(data, overrides)
    if token and "api_token" not in data:  # the file's api_token wins over the environment
        try:
            Config.model_validate({"api_token": token})
        except ValidationError as e:
            msg = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ConfigError("TLSTRACE_API_TOKEN", "api_token", msg) from None
        data = {**data, "api_token": token}
    return validate(data, source)


def validate(data: dict[str, Any], source: str) -> Config:
    context = {"tls_port": _tls_port(data)}
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as e:
        err = e.errors()[0]
        key = _loc(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            # model-level checks word their message as "sub.key: problem"
            sub, sep, rest = msg.partition(": ")
            if sep and _KEY.fullmatch(sub):
                key = f"{key}.{sub}" if key and not sub.startswith("[") else key + sub
                msg = rest
        elif err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r})"
        raise ConfigError(source, key or "(top level)", msg) from None


def _tls_port(data: dict[str, Any]) -> int:
    """The file's tls_port (the default port of tls: endpoints) while it is not validated yet."""
    port = data.get("tls_port")
    return port if isinstance(port, int) else int(Config.model_fields["tls_port"].default)


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _apply_overrides(data: dict[str, Any], o: Overrides) -> dict[str, Any]:
    data = dict(data)
    tls_port = _tls_port(data)
    if o.backend is not None:
        try:
            parse_endpoint(o.backend, default_port=tls_port)
        except ValueError as e:
            raise ConfigError("--backend", "backend", str(e)) from None
    if o.listen:
        listeners = []
        for text in o.listen:
            try:
                ep = parse_endpoint(text, default_port=tls_port)
            except ValueError as e:
                raise ConfigError("--listen", "listener", str(e)) from None
            if not ep.is_ip:
                raise ConfigError("--listen", "listener", f"{text!r}: not an IP address")
            if ep.scheme != "tls":
                raise ConfigError(
                    "--listen",
                    "listener",
                    f"{text!r}: only tls: listeners can be given as flags; "
                    "tcp: listeners need a peer, set them in the config file",
                )
            listeners.append({"listen": text})  # the model gives it the default backend
        data["listener"] = listeners
    if o.backend is not None:
        base = data.get("listener") or [dict(DEFAULT_LISTENER)]
        data["listener"] = [
            {**li, "backend": o.backend} if _is_tls_listener(li, tls_port) else li for li in base
        ]
    if o.cert is not None or o.key is not None or o.ca is not None:
        for flag, value in (("--cert", o.cert), ("--key", o.key), ("--ca", o.ca)):
            if value is not None and not Path(value).is_file():
                raise ConfigError(flag, flag.lstrip("-"), f"{value}: no such file")
        if (o.cert is None) != (o.key is None):
            raise ConfigError("--cert", "cert", "--cert and --key must be given together")
        domains = [dict(d) for d in data.get("server_domain") or [{"name": "default"}]]
        target = next((d for d in domains if d.get("name") == "default"), domains[0])
        if o.cert is not None:
            target["certificate"] = str(o.cert)
            target["private_key"] = str(o.key)
        if o.ca is not None:
            target["ca_list"] = str(o.ca)
            clients = [dict(d) for d in data.get("client_domain") or [{"name": "default"}]]
            for d in clients:
                d.setdefault("ca_list", str(o.ca))
            data["client_domain"] = clients
        data["server_domain"] = domains
    if o.hep:
        data["hep_id"] = _hep_flags(o.hep, data.get("hep_id", []))
    if o.trace:
        data["trace_on"] = True
    if o.trace_keys:
        data["trace_keys"] = True
    if o.api is not None:
        api = "" if o.api == "off" else o.api
        if api:
            from tlstrace.config.model import api_address

            try:
                api_address(api)
            except ValueError as e:
                raise ConfigError("--api", "api_listen", str(e)) from None
        data["api_listen"] = api
    if o.workers is not None:
        data["workers"] = _workers_flag(o.workers)
    if o.state_dir is not None:
        data["state_dir"] = str(o.state_dir)
    if o.log_level is not None:
        data["log_level"] = o.log_level
    if o.log_format is not None:
        data["log_format"] = o.log_format
    return data


def _hep_flags(flags: Sequence[str], existing: Any) -> list[str]:
    """The file's `hep_id`s and then the `--hep` values, each named (the `[name]` part is
    optional in both: names hep1, hep2, ... are given); a bad flag is reported as --hep."""
    from hep.destination import parse_hep_id, with_names

    file_ids = (
        [e for e in existing if isinstance(e, str)]
        if isinstance(existing, list) and all(isinstance(e, str) for e in existing)
        else None
    )
    if file_ids is None:  # not a list of strings: the model reports the file's mistake
        return [*(existing if isinstance(existing, list) else [existing]), *flags]
    named = with_names([*file_ids, *flags])
    for text in named[len(file_ids) :]:
        try:
            parse_hep_id(text)
        except ValueError as e:
            raise ConfigError("--hep", "hep_id", str(e)) from None
    return named


def _is_tls_listener(li: Any, tls_port: int) -> bool:
    if not isinstance(li, dict) or not isinstance(li.get("listen"), str):
        return False
    try:
        return parse_endpoint(li["listen"], default_port=tls_port).scheme == "tls"
    except ValueError:
        return False


def _workers_flag(text: str) -> int | str:
    """`--workers N` or `--workers auto`; the model checks the range."""
    from tlstrace.config.model import MAX_WORKERS

    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise ConfigError("--workers", "workers", f"{text!r}: a number or 'auto'") from None
    if not 1 <= n <= MAX_WORKERS:
        raise ConfigError("--workers", "workers", f"{n}: from 1 to {MAX_WORKERS}")
    return n
