"""`tlstrace check`: validate everything `run` would, and start nothing.

The same code as `run`: `load_config` (the file and the flags) and `preflight.prepare` (TLS
contexts, certificates, chains, CA bundles, HEP senders). Nothing listens, no HEP sender starts,
nothing is written: when the default domain's self-signed certificate does not exist yet, the
check makes sure `state_dir` could hold it and builds the contexts on a throwaway one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tlstrace.config import Config, ConfigError, Overrides, load_config
from tlstrace.preflight import Prepared, prepare, warnings
from tlstrace.tls import certgen
from tlstrace.tls.contexts import state_dir_error


def run(config_path: Path | None, overrides: Overrides) -> int:
    source = str(config_path) if config_path else "defaults"
    try:
        config = load_config(config_path, overrides)
        prepared, generated = _prepare(config, source)
    except ConfigError as e:
        print(f"tlstrace: configuration error: {e}", file=sys.stderr)
        return 2
    for warning in warnings(config, source):
        print(f"tlstrace: warning: {warning}", file=sys.stderr)
    print(f"tlstrace: configuration OK: {source}: {_summary(config, prepared, generated)}")
    return 0


def _prepare(config: Config, source: str) -> tuple[Prepared, Path | None]:
    """`prepare`, and the directory where `run` would generate the default certificate."""
    cert, key = certgen.self_signed_paths(config.state_dir)
    needed = any(
        d.certificate is None
        for li in config.listener
        if li.listen.scheme in ("tls", "wss")
        for d in config.server_domains_for(li)
    )
    if not needed or (cert.is_file() and key.is_file()):
        return prepare(config, source), None
    problem = _cannot_create(config.state_dir)
    if problem is not None:
        raise state_dir_error(config, source, problem)
    with tempfile.TemporaryDirectory(prefix="tlstrace-check-") as tmp:
        return prepare(config.model_copy(update={"state_dir": Path(tmp)}), source), config.state_dir


def _cannot_create(state_dir: Path) -> str | None:
    """Why `state_dir` (and files in it) could not be created, without creating anything."""
    if state_dir.exists() and not state_dir.is_dir():
        return "File exists"
    path = state_dir
    while not path.exists() and path.parent != path:
        path = path.parent
    if not path.is_dir():
        return "Not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "Permission denied"
    return None


def _summary(config: Config, prepared: Prepared, generated: Path | None) -> str:
    def n(count: int, what: str) -> str:
        return f"{count} {what}{'' if count == 1 else 's'}"

    identities = sum(len(c.identities) for c in prepared.server.values())
    parts = [
        n(len(config.listener), "listener"),
        n(identities, "server identity"),
        n(len(config.client_domain), "client domain"),
        n(len(prepared.senders), "HEP destination"),
    ]
    text = ", ".join(parts).replace("identitys", "identities")
    if generated is not None:
        text += f"; the self-signed certificate will be generated in {generated}"
    return text
