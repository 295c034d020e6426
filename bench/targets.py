"""What the load is driven at: the responder directly, tlstrace, HAProxy.

Each line of the benchmark's tables is a `Variant` in a `Regime`. A tlstrace variant may add
command-line arguments to the relay; "{hep}" in them becomes the address of the benchmark's UDP
HEP sink and "{hep_tcp}" that of its TCP sink, each started only when a selected variant needs
it. Adding a variant is one line in `VARIANTS`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Child, ProcessError, Procs, free_port, wait_listening

#: In the pinned regimes, the core of the load generator and the responder; the relays run
#: alone on the other one. The other regimes pin nothing.
LOAD_CPU = 0
RELAY_CPU = 1


@dataclass(frozen=True)
class Regime:
    name: str
    #: "closed" (each answer sends the next request), "paced" (open loop on a schedule),
    #: "handshake" (new connections) or "memory" (idle connections)
    load: str
    #: load generator + responder on LOAD_CPU, relay on RELAY_CPU; else nothing pinned
    pinned: bool
    #: what the regime is, for the tables and `--help`: a format string over `describe`'s
    #: values ({conns}, {inflight}, {generators}, {sparse}, {paced_conns}, ...)
    about: str

    def describe(self, values: Mapping[str, Any]) -> str:
        """`about` for the run's parameters (`python -m bench` arguments, or their defaults);
        a parameter not given reads "?"."""

        def n(v: Any) -> str:
            return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)

        sparse = [n(x) for x in values.get("sparse") or []]
        known = _Values({k: n(v) for k, v in values.items() if isinstance(v, (int, float))})
        if sparse:
            known["sparse"] = " and ".join(
                [", ".join(sparse[:-1]), sparse[-1]] if len(sparse) > 1 else sparse
            )
        return self.about.format_map(known)


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime(
            "saturated",
            "closed",
            False,
            "{conns} TLS connections x {inflight} INVITEs in flight from {generators} load"
            " generator processes (tlstrace-wss: the same over WSS, one text frame a message),"
            " nothing pinned: the relay is meant to be the bottleneck (see 'relay core')",
        ),
        Regime(
            "sparse",
            "closed",
            False,
            "{sparse} TLS connections x 1 INVITE in flight (how phones behave), nothing pinned",
        ),
        Regime(
            "paced",
            "paced",
            False,
            "{paced_conns} TLS connections, an open loop: INVITEs sent on a schedule at a"
            " steady {paced_rate} requests/s in total (and the sweep of --rates for the plot)"
            " from {paced_generators} load generator processes, nothing pinned",
        ),
        Regime(
            "handshake",
            "handshake",
            True,
            "new TLS 1.3 connections: handshake (ECDSA P-256) + one OPTIONS + close_notify,"
            " {workers} workers; generator on core 0, relay on core 1",
        ),
        Regime(
            "tracing",
            "closed",
            False,
            "the saturated load with tracing on: every message as HEP to a UDP collector,"
            " and to a TCP collector; HAProxy (no tracing) beside it",
        ),
        Regime(
            "memory",
            "memory",
            True,
            "{idle} idle TLS connections held after their handshake: resident memory per"
            " connection once RSS settles; generator on core 0, relay on core 1",
        ),
        Regime(
            "pinned",
            "closed",
            True,
            "the former 'persistent' scenario: {conns} connections x {inflight} in flight,"
            " generator and responder on core 0, relay on core 1: the generator is the"
            " bottleneck",
        ),
    )
}
#: what `python -m bench` runs without --regime (`pinned` only when asked for)
DEFAULT_REGIMES = ("saturated", "sparse", "paced", "handshake", "tracing", "memory")
#: the old --scenario names
SCENARIO_ALIASES = {"persistent": "pinned", "handshake": "handshake", "memory": "memory"}

_ALL = frozenset(REGIMES)


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "direct", "tlstrace" or "haproxy"
    #: extra `tlstrace run` arguments; "{hep}" is replaced by the UDP sink's
    #: 'HOST:PORT;transport=udp', "{hep_tcp}" by the TCP sink's 'HOST:PORT;transport=tcp'
    relay_args: tuple[str, ...] = ()
    regimes: frozenset[str] = _ALL
    #: tlstrace's listener: "tls" (SIP over TLS) or "wss" (SIP over WebSocket over TLS, the
    #: load generator upgrading each connection); the load generator's target scheme
    listener: str = "tls"
    #: the line its "vs" ratio is taken against, paired by repetition: HAProxy, or for a load
    #: HAProxy cannot relay (WSS to a SIP server) tlstrace's own TLS line
    baseline: str = "haproxy"

    @property
    def needs_hep(self) -> bool:
        return any("{hep}" in a for a in self.relay_args)

    @property
    def needs_hep_tcp(self) -> bool:
        return any("{hep_tcp}" in a for a in self.relay_args)


VARIANTS: list[Variant] = [
    # the load generator straight to the responder: the floor (pinned regimes only)
    Variant("direct", "direct", regimes=frozenset({"pinned", "handshake", "memory"})),
    Variant("tlstrace", "tlstrace", regimes=_ALL - {"tracing"}),
    # tracing on, every message to a local UDP HEP sink (issue 4)
    Variant(
        "tlstrace+trace",
        "tlstrace",
        ("--trace", "--hep", "{hep}"),
        frozenset({"tracing", "pinned"}),
    ),
    # the same to a TCP HEP sink
    Variant(
        "tlstrace+trace-tcp", "tlstrace", ("--trace", "--hep", "{hep_tcp}"), frozenset({"tracing"})
    ),
    # session keys collected (the sslkeylog callback on every handshake), nothing sent
    Variant("tlstrace+keys", "tlstrace", ("--trace-keys",), frozenset({"handshake"})),
    # SIP over WebSocket (issue 13): a wss: listener in front of the same responder; HAProxy
    # has no counterpart (in `mode tcp` it would hand WebSocket frames to a SIP server)
    Variant(
        "tlstrace-wss",
        "tlstrace",
        regimes=frozenset({"saturated"}),
        listener="wss",
        baseline="tlstrace",
    ),
    Variant("haproxy", "haproxy"),
]


def haproxy_path() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


@dataclass
class Target:
    """A started variant: where to connect, and the processes whose CPU and memory count."""

    variant: Variant
    scheme: str
    port: int
    children: list[Child] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.scheme}:127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]


@dataclass(frozen=True)
class Pki:
    cert: Path
    key: Path
    combined: Path  # certificate then key, for HAProxy's `crt`


def make_pki(workdir: Path) -> Pki:
    from tlstrace.tls.certgen import issue

    issued = issue("localhost", names=["localhost", "127.0.0.1"], kind="ec", days=2)
    cert, key, combined = workdir / "cert.pem", workdir / "key.pem", workdir / "haproxy.pem"
    issued.write(cert, key)
    combined.write_bytes(issued.cert_pem() + issued.key_pem())
    combined.chmod(0o600)
    return Pki(cert, key, combined)


def tlstrace_config(
    path: Path,
    *,
    port: int,
    backend_port: int,
    pki: Pki,
    state_dir: Path,
    processes: int,
    max_conns: int,
    listener: str = "tls",
) -> None:
    # the control API (when this tlstrace has one) gets its own free port in each process
    from tlstrace.config.model import Config

    # (a port just freed can be handed out again at once: never the listener's own)
    api_port = free_port()
    while api_port in (port, backend_port):
        api_port = free_port()
    api = f'api_listen = "127.0.0.1:{api_port}"\n' if "api_listen" in Config.model_fields else ""
    path.write_text(
        f"""# written by bench: {processes} process(es) sharing the port
{api}reuse_port = {"true" if processes > 1 else "false"}
tcp_max_connections = {max_conns}
tcp_connection_lifetime = 3600.0
log_level = "warning"
state_dir = "{state_dir}"

[[listener]]
listen = "{listener}:127.0.0.1:{port}"
backend = "tcp:127.0.0.1:{backend_port}"

[[server_domain]]
name = "default"
certificate = "{pki.cert}"
private_key = "{pki.key}"
"""
    )


def haproxy_config(path: Path, *, port: int, backend_port: int, pki: Pki, maxconn: int) -> None:
    # One thread, plain `mode tcp` with TLS terminated on the bind line. HAProxy sets
    # SO_REUSEPORT on its listeners by default on Linux, so two processes can share the port.
    path.write_text(
        f"""# written by bench
global
    nbthread 1
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend tls_in
    bind 127.0.0.1:{port} ssl crt {pki.combined}
    default_backend responder

backend responder
    server responder 127.0.0.1:{backend_port}
"""
    )


def start_target(
    variant: Variant,
    procs: Procs,
    workdir: Path,
    pki: Pki,
    *,
    backend_port: int,
    processes: int = 1,
    hep: str | None = None,
    hep_tcp: str | None = None,
    tag: str = "",
    pinned: bool = True,
) -> Target:
    """Start `processes` relay processes of `variant` sharing one port, pinned to RELAY_CPU
    unless `pinned` is false."""
    if variant.kind == "direct":
        return Target(variant, "tcp", backend_port)
    port = free_port()
    target = Target(variant, variant.listener if variant.kind == "tlstrace" else "tls", port)
    # a crash in C code (OpenSSL, uvloop) leaves a stack in the relay's log
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    name = f"{variant.name}{tag}"
    per_process = 9990 if processes > 1 else 8192  # the fd limit is 20,000, 2 fds a connection
    try:
        if variant.kind == "tlstrace":
            extra = [
                a.replace("{hep_tcp}", hep_tcp or "").replace("{hep}", hep or "")
                for a in variant.relay_args
            ]
            if (variant.needs_hep and hep is None) or (variant.needs_hep_tcp and hep_tcp is None):
                raise ProcessError(f"{variant.name} needs the HEP sink")
            argvs = []
            for i in range(processes):
                # one file per process: each needs its own API port, if the API exists
                cfg = workdir / f"{name}.{i}.toml"
                tlstrace_config(
                    cfg,
                    port=port,
                    backend_port=backend_port,
                    pki=pki,
                    state_dir=workdir / "state",
                    processes=processes,
                    max_conns=per_process,
                    listener=variant.listener,
                )
                argvs.append(
                    [sys.executable, "-m", "tlstrace", "run", "--config", str(cfg), *extra]
                )
        elif variant.kind == "haproxy":
            exe = haproxy_path()
            if exe is None:
                raise ProcessError("haproxy is not installed")
            cfg = workdir / f"{name}.cfg"
            haproxy_config(
                cfg,
                port=port,
                backend_port=backend_port,
                pki=pki,
                maxconn=9000 if processes > 1 else 8192,
            )
            argvs = [[exe, "-db", "-f", str(cfg)]] * processes
        else:
            raise ValueError(variant.kind)
        for i, argv in enumerate(argvs):
            cpus = {RELAY_CPU} if pinned else None
            target.children.append(procs.start(f"{name}.{i}", argv, cpus=cpus, env=env))
            # the first must bind before the second, or both race on SO_REUSEPORT checks
            wait_listening(port, target.children, count=i + 1)
        if processes > 1:
            time.sleep(0.5)
            for c in target.children:
                if not c.alive():
                    raise ProcessError(f"{c.name} exited: {c.log_tail()}")
    except BaseException:
        for c in target.children:
            procs.stop(c)
        raise
    return target


def stop_target(target: Target, procs: Procs) -> None:
    for c in target.children:
        procs.stop(c)
    target.children.clear()


def start_responder(
    procs: Procs, tag: str = "", port: int | None = None, pinned: bool = True
) -> tuple[Child, int]:
    port = port or free_port()
    child = procs.start(
        f"responder{tag}",
        [sys.executable, "-m", "tlstrace.responder", "--listen", f"127.0.0.1:{port}"],
        cpus={LOAD_CPU} if pinned else None,
    )
    wait_listening(port, [child])
    return child, port


def start_sink(procs: Procs, transport: str = "udp", pinned: bool = False) -> tuple[Child, str]:
    """The UDP (`bench.sink`) or TCP (`bench.tcp_sink`) HEP sink, and its `--hep` address."""
    import subprocess

    port = free_port()
    module = "bench.sink" if transport == "udp" else "bench.tcp_sink"
    child = procs.start(
        f"hep-sink-{transport}",
        [sys.executable, "-m", module, "--listen", f"127.0.0.1:{port}"],
        cpus={LOAD_CPU} if pinned else None,
        stdin=subprocess.PIPE,
    )
    if transport == "tcp":
        wait_listening(port, [child])
    return child, f"127.0.0.1:{port};transport={transport}"


def selected(variants: Sequence[Variant], regime: str, with_haproxy: bool) -> list[Variant]:
    return [v for v in variants if regime in v.regimes and (v.kind != "haproxy" or with_haproxy)]
