"""The sidecar process: listeners, timeouts, signals (SIGTERM/SIGINT stop, SIGHUP reloads)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import platform
import resource
import signal
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from hep.destination import parse_hep_ids
from hep.sender import HepSenderGroup
from tlstrace import __version__
from tlstrace.config import Config, ConfigError, Overrides, load_config
from tlstrace.feed import EventFeed, FeedObserver
from tlstrace.metrics import make_registry
from tlstrace.relay.connection import CloseReason
from tlstrace.relay.inbound import InboundListener
from tlstrace.relay.outbound import OutboundListener
from tlstrace.relay.runtime import Relay
from tlstrace.relay.sweeper import probe_backends_forever, sweep_forever
from tlstrace.tls.contexts import ClientContexts, ServerContexts, build_server_contexts
from tlstrace.trace.tracer import SwitchedBy, TraceManager

if TYPE_CHECKING:
    from api.server import ApiServer

log = logging.getLogger("tlstrace")

SIGHUP = SwitchedBy("signal", "SIGHUP")


class StartupError(Exception):
    pass


class Sidecar:
    """Everything one tlstrace process runs."""

    def __init__(self, config: Config, config_path: Path | None = None,
                 overrides: Overrides | None = None) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self.source = str(config_path) if config_path else "defaults"
        self.loop = asyncio.get_running_loop()
        self.relay = Relay(config, self.loop, source=self.source)
        self.senders = build_senders(config)
        self.tracing = TraceManager(config, list(self.senders), self.relay)
        self.feed = EventFeed()
        self.relay.observer = FeedObserver(self.tracing, self.feed)
        self.started = time.time()
        self.inbound: list[InboundListener] = []
        self.outbound: list[OutboundListener] = []
        self.stopped = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self.metrics = make_registry(self)
        self.api: ApiServer | None = None
        self._api_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = self.config
        for i, li in enumerate(cfg.listener):
            if li.listen.scheme == "tls":
                lst = InboundListener(self.relay, li, build_server_contexts(cfg, li, self.source))
                self.inbound.append(lst)
                starter = lst.start
            else:
                out = OutboundListener(self.relay, li)
                self.outbound.append(out)
                starter = out.start
            try:
                await starter()
            except OSError as e:
                self.close_listeners()
                where = "--listen" if self.overrides and self.overrides.listen else self.source
                raise StartupError(f"{where}: listener[{i}].listen: cannot listen on "
                                   f"{li.listen}: {e.strerror or e}") from None
        await self._start_api()
        self._sweeper = self.loop.create_task(sweep_forever(self.relay))
        self._prober = self.loop.create_task(probe_backends_forever(self.relay))
        await self.senders.start()
        for sender in self.senders:
            log.info("HEP destination %s (%s)", sender.dest, "traced to" if self.tracing.enabled
                     else "tracing is off")
        if self.tracing.enabled:
            by = SwitchedBy("flag", "--trace") if self.overrides and self.overrides.trace \
                else SwitchedBy("file", f"trace_on = true in {self.source}")
            log.info("tracing on from start-up: %s", by.text, extra=by.log_fields(True))
        if self.config.trace_on and not len(self.senders):
            log.warning("trace_on is set but no hep_id destination is configured: not tracing")
        if self.config.keys_wanted:
            log.warning("TLS session keys are collected%s%s",
                        " and sent in traces" if self.config.trace_keys else "",
                        f"; appended to {self.config.keylog_file}"
                        if self.config.keylog_file else "")
        for lst in self.inbound:
            idents = lst.contexts.identities
            log.info("listening on %s: certificate %s (domains %s); relaying to %s%s",
                     lst.listener.listen, idents[0].cert_file,
                     ", ".join(i.domain.name for i in idents), lst.listener.backend,
                     " with PROXY protocol v2" if lst.listener.proxy_protocol else "")
        for out in self.outbound:
            log.info("listening on %s: relaying over TLS to %s (client domain %s)",
                     out.listener.listen, out.listener.peer,
                     out.listener.client_domain or "default")

    async def _start_api(self) -> None:
        address = self.config.api_address
        if address is None:
            return
        from api.app import create_app
        from api.server import bind, make_server

        try:
            sock = bind(*address)
        except OSError as e:
            self.close_listeners()
            raise StartupError(f"{self.source}: api_listen: cannot listen on "
                               f"{self.config.api_listen}: {e.strerror or e}") from None
        self.api = make_server(create_app(self))
        self._api_task = self.loop.create_task(self.api.serve(sockets=[sock]))
        log.info("API and /metrics on http://%s/ (%s)", self.config.api_listen,
                 "bearer token required" if self.config.api_token else "no token")
        if not self.config.api_token and not ipaddress.ip_address(address[0]).is_loopback:
            log.warning("the API listens on %s without a token: anyone who can reach it can "
                        "switch tracing and close connections; set api_token or "
                        "TLSTRACE_API_TOKEN", self.config.api_listen)

    def reload(self, by: SwitchedBy = SIGHUP) -> tuple[bool, str]:
        """Re-read the configuration file and the certificates. New connections get the new
        certificates; open ones keep theirs. On any error nothing changes. A changed
        `trace_on` switches tracing (`by` is who asked for the reload)."""
        try:
            config = load_config(self.config_path, self.overrides) if self.config_path \
                else self.config
            by_listen = {str(li.listen): li for li in config.listener}
            replacements: list[tuple[InboundListener, ServerContexts]] = []
            for lst in self.inbound:
                li = by_listen.get(str(lst.listener.listen), lst.listener)
                replacements.append((lst, build_server_contexts(config, li, self.source)))
            client_contexts = ClientContexts(config, self.source)
        except ConfigError as e:
            self.relay.stats.reloads["failure"] += 1
            log.error("reload failed, keeping the current configuration and certificates: %s", e)
            return False, str(e)
        if [str(li.listen) for li in config.listener] != \
                [str(li.listen) for li in self.config.listener]:
            log.warning("reload: listener changes need a restart; kept the current listeners")
        # keys first, so that the new contexts are hooked when keys are (now) wanted
        self.relay.set_keys(config.keys_wanted)
        for lst, contexts in replacements:
            lst.replace_contexts(contexts)
        self.relay.replace_client_contexts(client_contexts)
        if config.hep_id != self.config.hep_id:
            log.warning("reload: hep_id changes need a restart; kept the current destinations")
        trace_on_changed = config.trace_on != self.config.trace_on
        self.relay.config = config
        self.tracing.apply_config(config)
        self.relay.stats.reloads["success"] += 1
        msg = f"reloaded: {sum(len(c.identities) for _, c in replacements)} server identities"
        log.info("%s (%s)", msg, by.text, extra={"reloaded_by": by.kind} if by.client is None
                 else {"reloaded_by": by.kind, "client": by.client})
        if trace_on_changed:
            if config.trace_on and not len(self.senders):
                log.warning("reload: trace_on is set but no hep_id destination is configured")
            self.tracing.set_enabled(config.trace_on and bool(len(self.senders)), SwitchedBy(
                by.kind, f"a reload ({by.text}): trace_on = {str(config.trace_on).lower()} in "
                f"{self.source}", by.client))
        return True, msg

    @property
    def config(self) -> Config:
        """The configuration in force (the relay's: a reload replaces it there)."""
        return self.relay.config

    def close_listeners(self) -> None:
        for lst in self.inbound:
            lst.close()
        for out in self.outbound:
            out.close()

    async def shutdown(self) -> None:
        """Stop accepting, close every connection after flushing what it has, then stop."""
        relay = self.relay
        if relay.shutting_down:
            return
        relay.shutting_down = True
        log.info("shutting down: %d connection(s) open", len(relay.connections))
        self.close_listeners()
        self.feed.close()
        for leg in list(relay.legs):
            leg.close(CloseReason.SHUTDOWN)
        deadline = self.loop.time() + self.config.shutdown_timeout
        while relay.legs and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for leg in list(relay.legs):
            transport = getattr(leg, "transport", None)
            if transport is not None:
                transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._prober is not None:
            self._prober.cancel()
        if self.api is not None and self._api_task is not None:
            self.api.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._api_task, 3)
        await self.senders.aclose()
        self.stopped.set()


def build_senders(config: Config) -> HepSenderGroup:
    """HEP senders for the trace destinations (all hep_id destinations when none is named)."""
    dests = parse_hep_ids(config.hep_id)
    wanted = set(config.trace_destination) or {d.name for d in dests}
    return HepSenderGroup.from_ids([d for d in dests if d.name in wanted],
                                   ca_file=config.hep_ca_list, verify=config.hep_verify_cert)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: Config, config_path: Path | None, overrides: Overrides | None) -> int:
    log.info("tlstrace %s starting (Python %s, %s); configuration: %s", __version__,
             platform.python_version(), ssl.OPENSSL_VERSION,
             config_path or "embedded defaults",
             extra={"version": __version__, "python": platform.python_version(),
                    "openssl": ssl.OPENSSL_VERSION,
                    "config": str(config_path) if config_path else None})
    sidecar = Sidecar(config, config_path, overrides)
    try:
        await sidecar.start()
    except (ConfigError, StartupError) as e:
        log.error("cannot start: %s", e)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: sidecar.relay.spawn(sidecar.shutdown()))
    loop.add_signal_handler(signal.SIGHUP, sidecar.reload)
    await sidecar.stopped.wait()
    log.info("stopped")
    return 0


def run_sidecar(config: Config, *, config_path: Path | None = None,
                overrides: Overrides | None = None) -> int:
    raise_fd_limit()
    return uvloop.run(serve(config, config_path, overrides))
