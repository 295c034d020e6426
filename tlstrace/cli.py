"""Command line: `tlstrace run`, `tlstrace demo`, `tlstrace hep-listen`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from tlstrace import __version__
from tlstrace.config import ConfigError, Overrides, load_config
from tlstrace.config.model import LogFormat, LogLevel
from tlstrace.logs import setup_logging

log = logging.getLogger("tlstrace")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlstrace", description=__doc__)
    p.add_argument("--version", action="version", version=f"tlstrace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument(
        "--listen", action="append", default=[], metavar="tls:IP:PORT",
        help="TLS listener (repeatable); replaces the file's listeners",
    )
    run.add_argument("--backend", metavar="tcp:HOST:PORT", help="SIP server to relay to")
    run.add_argument("--cert", type=Path, help="certificate (PEM) of the default domain")
    run.add_argument("--key", type=Path, help="private key (PEM) of the default domain")
    run.add_argument("--ca", type=Path, help="CA bundle for client and peer certificates")
    run.add_argument("--state-dir", type=Path, help="where the generated certificate lives")
    run.add_argument("--log-level", choices=get_args(LogLevel))
    run.add_argument("--log-format", choices=get_args(LogFormat),
                     help="text, or json: one JSON object per line (default: text)")
    run.add_argument(
        "--hep", action="append", default=[], metavar="DEST",
        help="HEP destination '[name]HOST:PORT;transport=udp|tcp|tls' (repeatable)",
    )
    run.add_argument("--trace", action="store_true", help="start with tracing on")
    run.add_argument("--api", metavar="HOST:PORT",
                     help="where the REST API and /metrics listen ('off': nowhere)")
    run.add_argument(
        "--trace-keys", action="store_true",
        help="put the TLS session keys in the traced events (secrets leave the process)",
    )

    listen = sub.add_parser("hep-listen", help="receive HEP and print each packet as JSON")
    listen.add_argument("address", metavar="udp:HOST:PORT", help="udp:HOST:PORT or tcp:HOST:PORT")
    listen.add_argument("--pcap", type=Path, help="also write the payloads to this pcap file")

    sub.add_parser("demo", help="show the whole loop on this machine in a few seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hep-listen":
        from hep.listen import run as hep_listen

        setup_logging("info")
        return hep_listen(args.address, args.pcap)
    if args.command == "demo":
        from tlstrace.demo import run as demo

        return demo()
    overrides = Overrides(
        listen=args.listen, backend=args.backend, cert=args.cert, key=args.key, ca=args.ca,
        state_dir=args.state_dir, log_level=args.log_level, log_format=args.log_format,
        hep=args.hep, trace=args.trace,
        trace_keys=args.trace_keys, api=args.api,
    )
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"tlstrace: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    from tlstrace.app import run_sidecar

    return run_sidecar(config, config_path=args.config, overrides=overrides)
