"""The supervisor of `workers` > 1: binds every listening socket and the API once, starts the
relay workers (`python -m tlstrace.supervisor.worker`, a fresh interpreter each: nothing of an
event loop is forked), restarts a worker that dies (with backoff), passes SIGTERM and SIGHUP on,
and serves the API and /metrics for all of them through `WorkersControl`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

from tlstrace.config import Config, ConfigError, Overrides
from tlstrace.control import Control, TraceRules
from tlstrace.feed import EventFeed
from tlstrace.logs import set_format
from tlstrace.preflight import prepare
from tlstrace.relay.listening import bind_listening
from tlstrace.relay.stats import RelayStats
from tlstrace.reloader import watch_file
from tlstrace.supervisor.boot import TraceWanted, WorkerBoot
from tlstrace.supervisor.channel import Caller, ChannelClosed, frame, open_channel
from tlstrace.supervisor.control import WorkersControl
from tlstrace.trace.tracer import SwitchedBy

log = logging.getLogger("tlstrace")

#: a worker that dies is started again after FIRST_DELAY seconds, doubled for each death in a
#: row (at most MAX_DELAY); a worker that ran STABLE seconds starts the count again
FIRST_DELAY = 0.25
MAX_DELAY = 10.0
STABLE = 30.0
#: deaths in a row after which the connections queued for the slot are refused
REBIND_AFTER = 3
#: seconds a worker may take to listen after it was started
START_TIMEOUT = 60.0
#: seconds between the supervisor's heartbeats to each worker, how long one may take, and
#: how many a worker may miss in a row before it is taken for hung (and killed)
HEARTBEAT = 1.0
HEARTBEAT_TIMEOUT = 5.0
HUNG_AFTER = 3

SIGHUP = SwitchedBy("signal", "SIGHUP")


class ApiRunning(Protocol):
    async def stop(self) -> None: ...


class ApiHost(Protocol):
    """How the supervisor serves the API (`tlstrace.app` provides it: only the process
    module imports api/)."""

    def bind(self, host: str, port: int) -> socket.socket: ...

    def serve(self, control: Control, stats: RelayStats, sock: socket.socket) -> ApiRunning: ...


class StartFailed(Exception):
    pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class WorkerHandle:
    """One worker slot: the process in it now, its channel, and how it is doing."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.caller: Caller | None = None
        #: started, ready, and given the current tracing state: the API asks it
        self.live = False
        self.status = "starting"
        self.pid: int | None = None
        #: its open connections at the last heartbeat
        self.connections = 0
        self.started = 0.0  # monotonic
        #: deaths in a row without a STABLE run in between
        self.failures = 0
        #: heartbeats missed in a row
        self.missed = 0
        #: processes started in the slot so far
        self.generation = 0
        self.ready: asyncio.Future[str | None] | None = None

    async def call(self, method: str, *args: Any, timeout: float) -> Any:
        if self.caller is None:
            raise ChannelClosed("not running")
        return await self.caller.call(method, *args, timeout=timeout)


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        overrides: Overrides | None,
        api: ApiHost,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.source = str(config_path) if config_path else "defaults"
        self.api_host = api
        self.api: ApiRunning | None = None
        self.workers = [WorkerHandle(i) for i in range(config.worker_count)]
        #: worker slot -> (host, port) -> its listening socket
        self.sockets: dict[int, dict[tuple[str, int], socket.socket]] = {}
        #: the supervisor's own counters (the API's refusals and time-outs)
        self.stats = RelayStats()
        self.started = time.time()
        self.restarts = 0
        #: the tracing state and filter every worker is to have (None: as the file says)
        self.trace_wanted: TraceWanted | None = None
        self.rules: TraceRules | None = None
        self.state_lock = asyncio.Lock()
        self.version = 0
        self.feed = EventFeed()
        self.control = WorkersControl(self)
        self.stopping = False
        self.stopped = asyncio.Event()
        self.tasks: set[asyncio.Task[Any]] = set()

    def running(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.live]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def set_trace_wanted(self, wanted: TraceWanted) -> None:
        self.trace_wanted = wanted
        self.version += 1

    def set_rules(self, rules: TraceRules) -> None:
        self.rules = rules
        self.version += 1

    async def resync(self, by: SwitchedBy) -> None:
        """After a reload (`by`: what asked for it) and at start-up: the configuration in
        force, the tracing state and the filter, as the workers now have them (for the API
        and for workers started later). Read and written under the state lock, so that a
        switch cannot come in between. The supervisor's own log level and format follow."""
        async with self.state_lock:
            try:
                config: Config = await self.control._one("config")
                state = await self.control._one("trace_state")
                rules = await self.control._one("trace_filter")
            except (TimeoutError, ChannelClosed):
                return
            before, self.config = self.config, config
            want = self.trace_wanted
            if want is None or (want.on, want.until) != (state.enabled, state.until):
                # a reload switched tracing (the file's trace_on): it is what switched it
                self.set_trace_wanted(TraceWanted(state.enabled, state.until, by))
            if rules != self.rules:
                self.set_rules(rules)
        if config.log_level != before.log_level:
            logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))
        if config.log_format != before.log_format:
            set_format(config.log_format)

    # -- start-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Raises StartFailed or ConfigError."""
        cfg = self.config
        for w in self.workers:
            try:
                self.sockets[w.index] = self._bind_slot()
            except StartFailed:
                self.close_sockets()
                raise
        # certificates and keys checked (and the default one generated) once, here
        prepare(cfg, self.source)
        api_sock = None
        if cfg.api_address is not None:
            try:
                api_sock = self.api_host.bind(*cfg.api_address)
            except OSError as e:
                self.close_sockets()
                raise StartFailed(
                    f"api_listen: cannot listen on {cfg.api_listen}: {e.strerror or e}"
                ) from None
        reasons = await asyncio.gather(*(self._spawn(w) for w in self.workers))
        failed = [(w, r) for w, r in zip(self.workers, reasons, strict=True) if r is not None]
        if failed:
            await self._stop_workers(0)
            if api_sock is not None:
                api_sock.close()
            self.close_sockets()
            w, reason = failed[0]
            raise StartFailed(f"worker {w.index}: {reason}")
        await self.resync(SwitchedBy("file", self.source))
        for w in self.workers:
            self.spawn(self._keep(w))
        self.spawn(self._heartbeat())
        if self.config_path is not None:
            self.spawn(
                watch_file(
                    self.config_path,
                    lambda: self.config.config_watch,
                    lambda: self.spawn(
                        self._reload(SwitchedBy("file", f"{self.config_path} changed"))
                    ),
                )
            )
        if api_sock is not None:
            self.api = self.api_host.serve(self.control, self.stats, api_sock)
        log.info(
            "%d workers relaying (pids %s)%s",
            len(self.workers),
            ", ".join(str(w.pid) for w in self.workers),
            f"; API and /metrics on http://{cfg.api_listen}/ "
            f"({'bearer token required' if cfg.api_token else 'no token'})"
            if api_sock is not None
            else "",
        )

    async def _spawn(self, w: WorkerHandle) -> str | None:
        """Start the process of slot `w` and wait until it listens; None, or why it did not
        start (it is then stopped)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        slot = self.sockets.get(w.index, {})
        fds = [s.fileno() for s in slot.values()]
        version = self.version
        boot = WorkerBoot(
            w.index,
            self.config,
            self.config_path,
            self.overrides,
            {address: s.fileno() for address, s in slot.items()},
            self.trace_wanted,
            self.rules,
            w.generation,
        )
        w.generation += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tlstrace.supervisor.worker",
                str(child.fileno()),
                pass_fds=(child.fileno(), *fds),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        w.proc, w.pid, w.started, w.status = proc, proc.pid, time.monotonic(), "starting"
        w.missed = 0
        reader, writer = await open_channel(parent)
        ready: asyncio.Future[str | None] = self.loop.create_future()
        w.ready = ready
        w.caller = Caller(
            reader,
            writer,
            lambda kind, value: self._notice(w, kind, value),
            functools.partial(self._garbled, w, proc),
        )
        writer.write(frame(boot))
        exited = self.loop.create_task(proc.wait())
        waits: set[asyncio.Future[Any]] = {ready, exited}
        await asyncio.wait(waits, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED")
        if ready.done():
            reason = ready.result()
        elif exited.done():
            reason = f"{describe_exit(exited.result())} while starting"
        else:
            reason = "did not listen in time"
        if not exited.done():
            exited.cancel()
        if reason is None and self.config is not boot.config:  # a reload ran while it started
            reason = await self._push(
                w, "reload", SwitchedBy("signal", "the other workers' reload"), timeout=60
            )
        if reason is None:
            async with self.state_lock:
                if self.version != version:  # a switch came while it started
                    if self.rules is not None:
                        reason = await self._push(w, "set_trace_filter", self.rules, timeout=10)
                    if reason is None and self.trace_wanted is not None:
                        reason = await self._push(w, "want_trace", self.trace_wanted, timeout=10)
                if reason is None:  # live only with the state in force
                    w.live, w.status = True, "up"
                    return None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        w.caller.close()
        w.status = f"could not start: {reason}"
        return reason

    @staticmethod
    async def _push(w: WorkerHandle, method: str, *args: Any, timeout: float) -> str | None:
        """A call that brings a starting worker to the state in force; None, or why not."""
        try:
            await w.call(method, *args, timeout=timeout)
        except (ChannelClosed, TimeoutError) as e:
            return f"did not take the state in force ({method}: {e or 'no answer in time'})"
        return None

    def _notice(self, w: WorkerHandle, kind: str, value: Any) -> None:
        if kind == "ready" and w.ready is not None and not w.ready.done():
            w.ready.set_result(None)
        elif kind == "failed" and w.ready is not None and not w.ready.done():
            w.ready.set_result(str(value))
        elif kind == "event" and self.feed.viewers:
            event = json.loads(value)
            event.pop("seq", None)
            event.pop("time", None)
            self.feed.publish(event)

    def _garbled(self, w: WorkerHandle, proc: asyncio.subprocess.Process, why: str) -> None:
        """The worker sent garbage on its channel: it is killed (and so replaced)."""
        log.error(
            "worker %d (pid %s) sent what is no frame on its channel (%s): killing it",
            w.index,
            proc.pid,
            why,
            extra={"worker": w.index, "pid": proc.pid},
        )
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    # -- running ----------------------------------------------------------------------------

    async def _keep(self, w: WorkerHandle) -> None:
        """Start the worker of slot `w` again whenever it dies, until shutdown."""
        while not self.stopping:
            proc = w.proc
            assert proc is not None
            code = await proc.wait()
            w.live = False
            if w.caller is not None:
                w.caller.close()
            self.control.retire(w.index, w.pid)
            if self.stopping:
                w.status = "stopped"
                return
            self.restarts += 1
            if time.monotonic() - w.started >= STABLE:
                w.failures = 0
            delay = min(MAX_DELAY, FIRST_DELAY * 2**w.failures)
            w.failures += 1
            why = describe_exit(code)
            w.status = f"restarting: pid {w.pid} {why}"
            log.error(
                "worker %d (pid %s) %s: its %d open connection(s) are lost, the other "
                "workers' go on; starting it again in %.2g s",
                w.index,
                w.pid,
                why,
                w.connections,
                delay,
                extra={"worker": w.index, "pid": w.pid, "lost_connections": w.connections},
            )
            w.connections = 0
            if w.failures >= REBIND_AFTER:
                self._rebind_slot(w)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            while not await self._respawn(w):
                # no process to wait for: try again after the next delay
                delay = min(MAX_DELAY, FIRST_DELAY * 2**w.failures)
                w.failures += 1
                await asyncio.sleep(delay)
                if self.stopping:
                    return

    async def _respawn(self, w: WorkerHandle) -> bool:
        """Start slot `w` again; False when no process was started (an exception: logged)."""
        try:
            reason = await self._spawn(w)
        except Exception as e:  # the keeper must go on
            log.exception("worker %d could not be started again: %s", w.index, e)
            w.status = f"could not start: {e}"
            if w.proc is not None and w.proc.returncode is None:  # started, then failed
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                return True  # the keeper waits for it, and starts the slot again
            return False
        if reason is None:
            log.info("worker %d started again (pid %s)", w.index, w.pid)
        else:
            log.error("worker %d could not start again: %s", w.index, reason)
        return True

    async def _heartbeat(self) -> None:
        """Each second: every worker's open connections (for the log line when it dies), and
        whether the supervisor has viewers of the event feed (the workers then send it
        their events). A worker that misses HUNG_AFTER heartbeats in a row (its event loop is
        stuck: it relays nothing either) is killed, and so replaced."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            viewers = bool(self.feed.viewers)
            workers = self.running()
            answers = await asyncio.gather(
                *(w.call("heartbeat", viewers, timeout=HEARTBEAT_TIMEOUT) for w in workers),
                return_exceptions=True,
            )
            for w, answer in zip(workers, answers, strict=True):
                if isinstance(answer, int):
                    w.connections, w.missed = answer, 0
                    continue
                if not isinstance(answer, asyncio.TimeoutError) or not w.live:
                    continue
                w.missed += 1
                if w.missed >= HUNG_AFTER and w.proc is not None and w.proc.returncode is None:
                    log.error(
                        "worker %d (pid %s) answered no heartbeat for %d s: killing it",
                        w.index,
                        w.pid,
                        round(w.missed * (HEARTBEAT + HEARTBEAT_TIMEOUT)),
                    )
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()

    async def _reload(self, by: SwitchedBy) -> None:
        outcome = await self.control.reload(by)
        if not outcome.ok:
            log.error("reload failed in a worker: %s", outcome.message)

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info(
            "shutting down: %d worker(s), %d connection(s) open",
            len(self.running()),
            sum(w.connections for w in self.running()),
        )
        self.feed.close()
        await self._stop_workers(self.config.shutdown_timeout + 5.0)
        if self.api is not None:
            await self.api.stop()
        self.close_sockets()
        for task in list(self.tasks):
            task.cancel()
        self.stopped.set()

    async def _stop_workers(self, grace: float) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after `grace` seconds.
        The supervisor's copies of the listening sockets are closed at once: once the
        workers have closed theirs, the kernel refuses new connections (no one would accept
        them)."""
        procs = [w.proc for w in self.workers if w.proc is not None]
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        self.close_sockets()
        waits = [self.loop.create_task(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            if pending:
                for p in procs:
                    if p.returncode is None:
                        log.warning("worker (pid %s) did not stop in time: killed", p.pid)
                        with contextlib.suppress(ProcessLookupError):
                            p.kill()
                await asyncio.wait(pending)
        for w in self.workers:
            w.live = False
            if w.caller is not None:
                w.caller.close()

    def _bind_slot(self, listen: bool = True) -> dict[tuple[str, int], socket.socket]:
        """A listening socket for each listener, for one worker slot: every slot has its own,
        bound with SO_REUSEPORT, so that the kernel spreads new connections evenly over
        the workers; the supervisor keeps them open, so that the connections queued on a
        worker that died wait for its replacement. Raises StartFailed."""
        out: dict[tuple[str, int], socket.socket] = {}
        for i, li in enumerate(self.config.listener):
            ep = li.listen
            try:
                out[ep.host, ep.port] = bind_listening(
                    ep.host, ep.port, backlog=4096, reuse_port=True, listen=listen
                )
            except OSError as e:
                for sock in out.values():
                    sock.close()
                where = "--listen" if self.overrides and self.overrides.listen else self.source
                raise StartFailed(
                    f"{where}: listener[{i}].listen: cannot listen on "
                    f"{li.listen}: {e.strerror or e}"
                ) from None
        return out

    def _rebind_slot(self, w: WorkerHandle) -> None:
        """After deaths in a row: the connections waiting on the slot's sockets are refused
        (closed), and new ones go to the other workers until the slot has a worker again:
        the new sockets are bound but do not listen (the kernel would queue a share of the
        new connections on them) until the worker that takes them serves them."""
        old = self.sockets.pop(w.index, {})
        for sock in old.values():
            sock.close()
        try:
            self.sockets[w.index] = self._bind_slot(listen=False)
        except StartFailed as e:
            log.error("worker %d: %s", w.index, e)

    def close_sockets(self) -> None:
        for slot in self.sockets.values():
            for sock in slot.values():
                sock.close()
        self.sockets.clear()


async def supervise(
    config: Config,
    config_path: Path | None,
    overrides: Overrides | None,
    api: ApiHost,
) -> int:
    """Run the supervisor until SIGTERM or SIGINT; the exit status."""
    sup = Supervisor(config, config_path, overrides, api)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: sup.spawn(sup.shutdown()))
    try:
        await sup.start()
    except (ConfigError, StartFailed) as e:
        log.error("cannot start: %s", e)
        await sup.shutdown()
        return 2
    loop.add_signal_handler(signal.SIGHUP, lambda: sup.spawn(sup._reload(SIGHUP)))
    await sup.stopped.wait()
    log.info("stopped")
    return 0
