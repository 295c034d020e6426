"""Command line: `tlstrace run`, `check`, `demo`, `hep-listen`, and the API client commands
`trace`, `connections`, `reload`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from tlstrace import __version__
from tlstrace.config import ConfigError, Overrides, load_config
from tlstrace.config.model import DEFAULT_LISTENER, Config, LogFormat, LogLevel
from tlstrace.logs import setup_logging

log = logging.getLogger("tlstrace")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlstrace", description=__doc__)
    p.add_argument("--version", action="version", version=f"tlstrace {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = argparse.ArgumentParser(add_help=False)  # the flags of `run`, which `check` shares
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (default: none, the embedded defaults)",
    )
    run.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="tls:IP:PORT",
        help="TLS listener (repeatable); replaces the file's listeners "
        f"(default: {DEFAULT_LISTENER['listen']})",
    )
    run.add_argument(
        "--backend",
        metavar="tcp:HOST:PORT",
        help="SIP server every tls: listener relays to, tcp: or tls: "
        f"(default: {DEFAULT_LISTENER['backend']})",
    )
    run.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="certificate (PEM, may include the chain) of the default server "
        "domain; with --key (default: a generated self-signed one)",
    )
    run.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help="private key (PEM) of the default server domain; with --cert",
    )
    run.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA bundle for client certificates and for peers"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the generated certificate lives "
        "(default: $XDG_STATE_HOME/tlstrace or ~/.local/state/tlstrace)",
    )
    run.add_argument(
        "--log-level",
        choices=get_args(LogLevel),
        help="how much to log (default: the file's log_level, else info)",
    )
    run.add_argument(
        "--log-format",
        choices=get_args(LogFormat),
        help="text, or json: one JSON object per line (default: the file's log_format, else text)",
    )
    run.add_argument(
        "--hep",
        action="append",
        default=[],
        metavar="DEST",
        help="HEP destination '[name]HOST[:PORT][;transport=udp|tcp|tls]', [name] optional, "
        "port 9060, udp (repeatable; adds to the file's hep_id)",
    )
    run.add_argument(
        "--trace", action="store_true", help="start with tracing on (needs a HEP destination)"
    )
    run.add_argument(
        "--api",
        metavar="HOST:PORT",
        help="where the REST API and /metrics listen ('off': nowhere; "
        f"default: {Config.model_fields['api_listen'].default})",
    )
    run.add_argument(
        "--workers",
        metavar="N",
        help="relay worker processes behind one API and /metrics, or 'auto' (the cores "
        "this process may use); default: the file's workers, else 1",
    )
    run.add_argument(
        "--trace-keys",
        action="store_true",
        help="put the TLS session keys in the traced events (secrets leave the process)",
    )

    sub.add_parser("run", parents=[run], help="run the sidecar")
    sub.add_parser(
        "check",
        parents=[run],
        help="validate the configuration, the flags, the certificates and keys as "
        "`run` would, start nothing; exit 0 when all is well",
    )

    listen = sub.add_parser("hep-listen", help="receive HEP and print each packet as JSON")
    listen.add_argument("address", metavar="udp:HOST:PORT", help="udp:HOST:PORT or tcp:HOST:PORT")
    listen.add_argument(
        "--pcap", type=Path, metavar="FILE", help="also write the payloads to this pcap file"
    )

    demo = sub.add_parser("demo", help="show the whole loop on this machine in a few seconds")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's certificate, private key and key-log file "
        "(default: removed when the demo ends)",
    )
    _add_client_commands(sub)
    return p


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands that talk to a running sidecar's API."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        metavar="HOST:PORT",
        help="the sidecar's API, an IP address or a host name (default: api_listen of "
        "--config, else 127.0.0.1:8080); the token comes from api_token of --config, else "
        "from the environment variable TLSTRACE_API_TOKEN",
    )
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read api_listen and api_token from this TOML file",
    )
    trace = sub.add_parser("trace", parents=[common], help="switch tracing, or show it")
    trace.add_argument(
        "action",
        choices=["on", "off", "status"],
        help="on, off, or status (what GET /api/trace says)",
    )
    trace.add_argument(
        "--for",
        dest="for_",
        metavar="DURATION",
        help="with on: switch off again after this long (90s, 10m, 1h30m)",
    )
    conns = sub.add_parser("connections", parents=[common], help="list the open TLS connections")
    conns.add_argument(
        "--direction",
        choices=["inbound", "outbound"],
        help="only connections from clients (inbound) or to peers (outbound)",
    )
    conns.add_argument(
        "--traced",
        action=argparse.BooleanOptionalAction,
        help="only traced (--traced) or untraced (--no-traced) ones",
    )
    conns.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    conns.add_argument("--json", action="store_true", help="print the API's JSON")
    sub.add_parser(
        "reload",
        parents=[common],
        help="re-read the configuration file and the certificates (as SIGHUP)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "hep-listen":
        from hep.listen import run as hep_listen

        setup_logging("info")
        return hep_listen(args.address, args.pcap)
    if args.command == "demo":
        from tlstrace.demo import run as demo

        return demo(keep=args.keep)
    if args.command in ("trace", "connections", "reload"):
        from tlstrace.client import main as client

        return client(args)
    overrides = Overrides(
        listen=args.listen,
        backend=args.backend,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        state_dir=args.state_dir,
        log_level=args.log_level,
        log_format=args.log_format,
        hep=args.hep,
        trace=args.trace,
        trace_keys=args.trace_keys,
        api=args.api,
        workers=args.workers,
    )
    if args.command == "check":
        from tlstrace.check import run as check

        return check(args.config, overrides)
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"tlstrace: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    from tlstrace.app import run_sidecar

    return run_sidecar(config, config_path=args.config, overrides=overrides)
