"""The sidecar process: listeners, timeouts, signals (SIGTERM/SIGINT stop, SIGHUP reloads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import resource
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from hep.sender import HepSenderGroup
from tlstrace import __version__, fds
from tlstrace.config import Config, ConfigError, Overrides, load_config
from tlstrace.fds import fd_limit, free_at_least, open_fds
from tlstrace.feed import EventFeed, FeedObserver
from tlstrace.logs import set_format
from tlstrace.preflight import prepare, sender_for, trace_destinations, warnings
from tlstrace.relay.connection import CloseReason
from tlstrace.relay.inbound import InboundListener
from tlstrace.relay.outbound import OutboundListener
from tlstrace.relay.ratelimit import HandshakeGate
from tlstrace.relay.runtime import Relay
from tlstrace.relay.sweeper import probe_backends_forever, sweep_forever
from tlstrace.reload import ReloadOutcome, ReloadPlan
from tlstrace.reload import plan as reload_plan
from tlstrace.reloader import Reloader, watch_file
from tlstrace.sidecar_control import SidecarControl
from tlstrace.tls.contexts import ClientContexts, ServerContexts, build_server_contexts
from tlstrace.trace.timer import TracingTimer
from tlstrace.trace.tracer import SwitchedBy, TraceManager

if TYPE_CHECKING:
    from api.server import ApiGuard, ApiServer
    from tlstrace.control import Control
    from tlstrace.relay.stats import RelayStats

log = logging.getLogger("tlstrace")

SIGHUP = SwitchedBy("signal", "SIGHUP")

#: seconds a HEP sender replaced by a reload may take to send what it queued
HEP_DRAIN_SECONDS = 5.0


class StartupError(Exception):
    pass


@dataclass
class PreparedReload:
    """What a reload built off the event loop, swapped in by `Sidecar.apply_reload`."""

    plan: ReloadPlan
    replacements: list[tuple[InboundListener, ServerContexts]]
    client_contexts: ClientContexts


class Sidecar:
    """Everything one tlstrace process runs."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        overrides: Overrides | None = None,
        *,
        serve_api: bool = True,
        watch_config: bool = True,
    ) -> None:
        """Raises ConfigError (see `preflight.prepare`). A worker process (`workers` > 1)
        serves no API and watches no file (`serve_api`, `watch_config` False): its
        supervisor does."""
        self.serve_api = serve_api
        self.watch_config = watch_config
        self.config_path = config_path
        self.overrides = overrides
        self.source = str(config_path) if config_path else "defaults"
        self.loop = asyncio.get_running_loop()
        fds.prepare()
        self.prepared = prepare(config, self.source)
        self.relay = Relay(
            config, self.loop, source=self.source, client_contexts=self.prepared.client
        )
        self.senders = self.prepared.senders
        self.tracing = TraceManager(config, list(self.senders), self.relay)
        self.trace_timer = TracingTimer(self.tracing, self.loop)
        self.feed = EventFeed()
        self.relay.observer = FeedObserver(self.tracing, self.feed)
        self.started = time.time()
        self.inbound: list[InboundListener] = []
        self.outbound: list[OutboundListener] = []
        self.stopped = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._file_watch: asyncio.Task[None] | None = None
        self._api_keep: socket.socket | None = None
        self.api: ApiServer | None = None
        self._api_task: asyncio.Task[None] | None = None
        self._api_guard: ApiGuard | None = None
        self.reloader = Reloader(
            self.loop, self.prepare_reload, self.apply_reload, self.reload_failed
        )
        #: who asked for the reload that runs next
        self.reload_by = SIGHUP
        #: what the API and /metrics see of this process (`tlstrace.control`)
        self.control = SidecarControl(self)

    async def start(self) -> None:
        cfg = self.config
        for i, li in enumerate(cfg.listener):
            if li.listen.scheme != "tcp":  # tls:, wss:, ws:
                lst = InboundListener(self.relay, li, self.prepared.server[str(li.listen)])
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
                raise StartupError(
                    f"{where}: listener[{i}].listen: cannot listen on "
                    f"{li.listen}: {e.strerror or e}"
                ) from None
        await self._start_api()
        self._sweeper = self.loop.create_task(sweep_forever(self.relay))
        self._prober = self.loop.create_task(probe_backends_forever(self.relay))
        self._watcher = self.loop.create_task(self._watch_listeners())
        if self.config_path is not None and self.watch_config:
            path = self.config_path
            self._file_watch = self.loop.create_task(
                watch_file(
                    path,
                    lambda: self.config.config_watch,
                    lambda: self.request_reload(SwitchedBy("file", f"{path} changed")),
                )
            )
        check_fd_limit(self.config)
        await self.senders.start()
        for sender in self.senders:
            log.info(
                "HEP destination %s (%s)",
                sender.dest,
                "traced to" if self.tracing.enabled else "tracing is off",
            )
        if self.tracing.enabled:
            by = (
                SwitchedBy("flag", "--trace")
                if self.overrides and self.overrides.trace
                else SwitchedBy("file", f"trace_on = true in {self.source}")
            )
            log.info("tracing on from start-up: %s", by.text, extra=by.log_fields(True))
        for warning in warnings(self.config, self.source):  # as `tlstrace check` prints them
            log.warning("%s", warning)
        if self.tracing.enabled and self.config.trace_on_for_seconds:
            self.trace_timer.switch(True, self.config.trace_on_for_seconds)
        if self.config.keys_wanted:
            log.warning(
                "TLS session keys are collected%s%s",
                " and sent in traces" if self.config.trace_keys else "",
                f"; appended to {self.config.keylog_file}" if self.config.keylog_file else "",
            )
        for lst in self.inbound:
            idents = lst.contexts.identities
            if lst.listener.listen.scheme == "ws":  # no TLS: no certificate
                log.info(
                    "listening on %s: relaying to %s", lst.listener.listen, lst.listener.backend
                )
                continue
            log.info(
                "listening on %s: certificate %s (domains %s); relaying to %s%s",
                lst.listener.listen,
                idents[0].cert_file,
                ", ".join(i.domain.name for i in idents),
                lst.listener.backend,
                " with PROXY protocol v2" if lst.listener.proxy_protocol else "",
            )
        for out in self.outbound:
            log.info(
                "listening on %s: relaying over TLS to %s (client domain %s)",
                out.listener.listen,
                out.listener.peer,
                out.listener.client_domain or "default",
            )

    async def _start_api(self) -> None:
        address = self.config.api_address
        if address is None or not self.serve_api:
            return
        from api.app import create_app
        from api.server import ApiGuard, bind, make_server

        try:
            sock = bind(*address)
        except OSError as e:
            self.close_listeners()
            where = (
                "--api"
                if self.overrides and self.overrides.api is not None
                else self.source
                if "api_listen" in self.config.model_fields_set
                else "defaults"
            )
            raise StartupError(
                f"{where}: api_listen: cannot listen on {self.config.api_listen}: {e.strerror or e}"
            ) from None
        self._api_keep = sock.dup()  # see tlstrace.relay.listening
        self._api_guard = ApiGuard(lambda: self.config, self.relay.stats)
        self.api = make_server(create_app(self.control), self._api_guard)
        self._api_task = self.loop.create_task(self.api.serve(sockets=[sock]))
        log.info(
            "API and /metrics on http://%s/ (%s)",
            self.config.api_listen,
            "bearer token required" if self.config.api_token else "no token",
        )

    def request_reload(self, by: SwitchedBy = SIGHUP) -> asyncio.Future[ReloadOutcome]:
        """Ask `self.reloader` for a reload (SIGHUP, `POST /api/reload`); `by` is who asked,
        for the log lines (of coalesced requests, the latest names the reload)."""
        self.reload_by = by
        return self.reloader.request()

    def prepare_reload(self) -> PreparedReload:
        """The slow part of a reload: re-read the configuration file, decide what each changed
        key does (`tlstrace.reload`), build the SSL contexts and parse the certificates. Runs
        in a worker thread: it touches nothing live."""
        loaded = load_config(self.config_path, self.overrides) if self.config_path else self.config
        plan = reload_plan(self.config, loaded)
        config = plan.config
        by_listen = {str(li.listen): li for li in config.listener}
        replacements: list[tuple[InboundListener, ServerContexts]] = []
        for lst in self.inbound:
            li = by_listen.get(str(lst.listener.listen), lst.listener)
            replacements.append((lst, build_server_contexts(config, li, self.source)))
        return PreparedReload(plan, replacements, ClientContexts(config, self.source))

    def reload_failed(self, e: Exception) -> ReloadOutcome:
        self.relay.stats.reloads["failure"] += 1
        if not isinstance(e, ConfigError):
            log.error(
                "reload failed, keeping the current configuration and certificates", exc_info=e
            )
            return ReloadOutcome(False, f"{type(e).__name__}: {e}")
        log.error("reload failed, keeping the current configuration and certificates: %s", e)
        return ReloadOutcome(False, str(e))

    def apply_reload(self, prepared: PreparedReload) -> ReloadOutcome:
        """Put what `prepare_reload` built in force (in the event loop) and apply what changed
        as `tlstrace.reload` decides for each key; say which changed keys need a restart (they
        keep their running value). New connections get the new certificates; open ones keep
        theirs. On any error nothing changes."""
        plan, replacements = prepared.plan, prepared.replacements
        client_contexts = prepared.client_contexts
        config = plan.config
        try:
            senders = self._new_senders(config)
        except ConfigError as e:
            return self.reload_failed(e)
        for key, why in plan.not_applied.items():
            log.warning("reload: %s changed but %s; kept the running value", key, why)
        # keys first, so that the new contexts are hooked when keys are (now) wanted
        self.relay.set_keys(config.keys_wanted)
        for lst, contexts in replacements:
            lst.replace_contexts(contexts)
        self.relay.replace_client_contexts(client_contexts)
        had_senders = bool(len(self.senders))
        if senders is not None:
            self._swap_senders(senders)
        if "log_level" in plan.applied:
            logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))
        self.relay.config = config
        self.relay.handshake_gate = HandshakeGate.from_config(
            config, self.relay.stats, self.relay.handshake_gate
        )
        self.tracing.apply_config(config)
        limit_changed = "trace_on_for_seconds" in plan.applied and self.tracing.enabled
        by = self.reload_by
        if "trace_on" in plan.applied or (config.trace_on and (not had_senders or limit_changed)):
            self.trace_timer.switch(
                config.trace_on and bool(len(self.senders)),
                config.trace_on_for_seconds or None,
                SwitchedBy(
                    by.kind,
                    f"a reload ({by.text}): trace_on = "
                    f"{str(config.trace_on).lower()} in {self.source}",
                    by.client,
                ),
            )
        elif self.tracing.enabled and not len(self.senders):
            self.trace_timer.switch(
                False,
                by=SwitchedBy(  # nowhere to trace to
                    by.kind, f"a reload ({by.text}): no HEP destination is left", by.client
                ),
            )
        self.relay.stats.reloads["success"] += 1
        msg = f"reloaded: {sum(len(c.identities) for _, c in replacements)} server identities"
        if plan.applied:
            msg += "; applied: " + ", ".join(plan.applied)
        if plan.not_applied:
            msg += "; not applied (needs a restart): " + ", ".join(plan.not_applied)
        log.info(
            "%s (%s)",
            msg,
            by.text,
            extra={"reloaded_by": by.kind}
            if by.client is None
            else {"reloaded_by": by.kind, "client": by.client},
        )
        if "log_format" in plan.applied:
            set_format(config.log_format)  # after the reload's own line
        return ReloadOutcome(True, msg, plan.applied, plan.not_applied)

    def _new_senders(self, config: Config) -> HepSenderGroup | None:
        """The senders `config` asks for, reusing the running sender of every destination
        that did not change (its queue and counters go on); None when nothing changed."""
        dests = {d.name: d for d in trace_destinations(config)}
        tls_changed = (config.hep_ca_list, config.hep_verify_cert) != (
            self.config.hep_ca_list,
            self.config.hep_verify_cert,
        )
        running = {s.name: s for s in self.senders}
        keep = {
            name
            for name, s in running.items()
            if dests.get(name) == s.dest and not (tls_changed and s.dest.transport == "tls")
        }
        if keep == set(running) == set(dests):
            return None
        group = HepSenderGroup()
        for name, dest in dests.items():
            group.add(running[name] if name in keep else sender_for(config, dest, self.source))
        return group

    def _swap_senders(self, group: HepSenderGroup) -> None:
        """Put `group` in force: start its new senders; the ones it dropped send what they
        queued (at most HEP_DRAIN_SECONDS) and stop."""
        old, self.senders = self.senders, group
        self.tracing.senders = list(group)
        for s in group:
            if s.name not in old or old[s.name] is not s:
                self.relay.spawn(s.start())
                log.info("reload: HEP destination %s (%s) started", s.name, s.dest)
        for s in old:
            if s.name not in group or group[s.name] is not s:
                self.relay.spawn(s.aclose(HEP_DRAIN_SECONDS))
                log.info(
                    "reload: HEP destination %s (%s) replaced: sending what it queued "
                    "(%d packets), then stopping",
                    s.name,
                    s.dest,
                    s.stats.queue_depth,
                )

    async def _watch_listeners(self) -> None:
        """Serve again any listener uvloop stopped after a failed accept (see
        tlstrace.relay.listening); log it and count it."""
        listeners: list[InboundListener | OutboundListener] = [*self.inbound, *self.outbound]
        for lst in listeners:
            self.relay.stats.accept_failures[str(lst.listener.listen)] += 0
        self.relay.stats.accept_failures["api"] += 0
        exhausted = False
        while True:
            await asyncio.sleep(0.5)
            # libuv answers EMFILE on accept by accepting and closing the pending connections
            # with a descriptor it keeps for that, and tells nobody: the descriptor count is
            # the only sign
            if not free_at_least(_FD_EXHAUSTED):
                if not exhausted:
                    self.relay.stats.fd_exhausted += 1
                    log.error(
                        "out of file descriptors (%d of %d open): new connections are "
                        "accepted and closed at once until some are freed",
                        open_fds(),
                        fd_limit(),
                    )
                exhausted = True
            elif free_at_least(2 * _FD_EXHAUSTED):
                exhausted = False
            for lst in listeners:
                if lst.listening is None or not lst.listening.stopped():
                    continue
                name = str(lst.listener.listen)
                self._accept_failed(name)
                try:
                    lst.server = await lst.listening.restart()
                except OSError as e:
                    log.error("listener %s: cannot serve it again yet: %s", name, e)
            await self._watch_api()

    async def _watch_api(self) -> None:
        api, keep = self.api, self._api_keep
        if api is None or keep is None or self.relay.shutting_down:
            return
        servers = getattr(api, "servers", [])
        if not any(
            s.is_serving() and any(k is None or k.fileno() < 0 for k in s.sockets) for s in servers
        ):
            return
        self._accept_failed("api")
        from api.app import create_app
        from api.server import make_server

        try:
            sock = keep.dup()
        except OSError as e:
            log.error("API: cannot serve it again yet: %s", e)
            return
        api.should_exit = True
        if self._api_task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._api_task, 3)
        self.api = make_server(create_app(self.control), self._api_guard)
        self._api_task = self.loop.create_task(self.api.serve(sockets=[sock]))

    def _accept_failed(self, name: str) -> None:
        self.relay.stats.accept_failures[name] += 1
        log.error(
            "%s: accept failed (%d of %d file descriptors open): the event loop stopped "
            "this listener; serving it again",
            name,
            open_fds(),
            fd_limit(),
        )

    @property
    def config(self) -> Config:
        """The configuration in force (the relay's: a reload replaces it there)."""
        return self.relay.config

    def close_listeners(self) -> None:
        for lst in self.inbound:
            lst.close()
        for out in self.outbound:
            out.close()

    async def _drain(self, deadline: float) -> None:
        """Close each connection as soon as nothing its ends sent is on its way: what a peer
        sent before the signal (still in the socket, half-read, or held for a backend that is
        connecting) is relayed first. Those still busy at `deadline` are closed by the caller."""
        relay = self.relay
        while True:
            busy = 0
            for leg in list(relay.legs):
                if leg.closed:
                    continue
                if leg.settled():
                    leg.close(CloseReason.SHUTDOWN)
                else:
                    busy += 1
            if not busy:
                return
            if self.loop.time() >= deadline:
                log.warning(
                    "shutdown: %d connection end(s) still had data on the way after half "
                    "of shutdown_timeout (%g s): closing them",
                    busy,
                    self.config.shutdown_timeout,
                )
                return
            await asyncio.sleep(0.02)

    async def shutdown(self) -> None:
        """Stop accepting; close each connection once what its ends sent has been relayed
        (`_drain`), flushing what it has; abort what is left at shutdown_timeout; stop."""
        relay = self.relay
        if relay.shutting_down:
            return
        relay.shutting_down = True
        log.info("shutting down: %d connection(s) open", len(relay.connections))
        self.close_listeners()
        self.feed.close()
        timeout = self.config.shutdown_timeout
        deadline = self.loop.time() + timeout
        # half of it at most for what is on its way, so that what was relayed by then still
        # has the other half to be flushed (a client that never stops sending never settles)
        await self._drain(deadline - timeout / 2)
        for leg in list(relay.legs):
            leg.close(CloseReason.SHUTDOWN)
        while relay.legs and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = [t for leg in relay.legs if (t := getattr(leg, "transport", None)) is not None]
        if left:
            log.warning(
                "shutdown: %d connection end(s) not flushed after shutdown_timeout (%g s): "
                "aborted, %d byte(s) unsent",
                len(left),
                self.config.shutdown_timeout,
                sum(t.get_write_buffer_size() for t in left),
            )
        for transport in left:
            transport.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._prober is not None:
            self._prober.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._file_watch is not None:
            self._file_watch.cancel()
        if self.api is not None and self._api_task is not None:
            self.api.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._api_task, 3)
        await self.senders.aclose()
        self.reloader.close()
        self.stopped.set()


#: fewer free descriptors than this: accepts are failing (or about to)
_FD_EXHAUSTED = 4


def check_fd_limit(config: Config) -> None:
    """Warn when RLIMIT_NOFILE cannot hold tcp_max_connections (two descriptors each: the
    client and its backend connection), the API's connections and the reserve."""
    need = 2 * config.tcp_max_connections + config.api_max_connections + config.fd_reserve + 32
    limit = fd_limit()
    if limit < need:
        log.warning(
            "the file descriptor limit (RLIMIT_NOFILE %d) is below what "
            "tcp_max_connections (%d), api_max_connections (%d) and fd_reserve (%d) "
            "need (about %d): accepts will fail before tcp_max_connections is reached",
            limit,
            config.tcp_max_connections,
            config.api_max_connections,
            config.fd_reserve,
            need,
        )


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def log_start(config_path: Path | None, workers: int = 1) -> None:
    log.info(
        "tlstrace %s starting (Python %s, %s); configuration: %s%s",
        __version__,
        platform.python_version(),
        ssl.OPENSSL_VERSION,
        config_path or "embedded defaults",
        f"; {workers} worker processes" if workers > 1 else "",
        extra={
            "version": __version__,
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "config": str(config_path) if config_path else None,
        },
    )


async def serve(config: Config, config_path: Path | None, overrides: Overrides | None) -> int:
    loop = asyncio.get_running_loop()
    # a SIGHUP during start-up (once "listening on" is logged, say) is kept, not fatal: the
    # reload it asks for runs as soon as the sidecar is up
    early_hup: list[bool] = []
    loop.add_signal_handler(signal.SIGHUP, early_hup.append, True)
    log.info(
        "tlstrace %s starting (Python %s, %s); configuration: %s",
        __version__,
        platform.python_version(),
        ssl.OPENSSL_VERSION,
        config_path or "embedded defaults",
        extra={
            "version": __version__,
            "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION,
            "config": str(config_path) if config_path else None,
        },
    )
    try:
        sidecar = Sidecar(config, config_path, overrides)
        await sidecar.start()
    except (ConfigError, StartupError) as e:
        log.error("cannot start: %s", e)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: sidecar.relay.spawn(sidecar.shutdown()))
    loop.add_signal_handler(signal.SIGHUP, sidecar.request_reload)
    if early_hup:
        sidecar.request_reload()
    await sidecar.stopped.wait()
    log.info("stopped")
    return 0


class _ApiRunning:
    def __init__(self, server: ApiServer, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.task, 3)


class ApiHost:
    """The API for a supervisor of worker processes (`tlstrace.supervisor.pool.ApiHost`)."""

    def bind(self, host: str, port: int) -> socket.socket:
        from api.server import bind

        return bind(host, port)

    def serve(self, control: Control, stats: RelayStats, sock: socket.socket) -> _ApiRunning:
        from api.app import create_app
        from api.server import ApiGuard, make_server

        server = make_server(create_app(control), ApiGuard(lambda: control.config, stats))
        return _ApiRunning(
            server, asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        )


def run_sidecar(
    config: Config, *, config_path: Path | None = None, overrides: Overrides | None = None
) -> int:
    raise_fd_limit()
    workers = config.worker_count
    if workers > 1:
        from tlstrace.supervisor.pool import supervise

        log_start(config_path, workers)
        return uvloop.run(supervise(config, config_path, overrides, ApiHost()))
    return uvloop.run(serve(config, config_path, overrides))
