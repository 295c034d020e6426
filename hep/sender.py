"""Non-blocking HEP senders (asyncio; works under uvloop).

`HepSender.send(data)` is what the relay calls for each encoded packet: synchronous, O(1),
never blocks, never raises. It returns False when the packet was dropped, and counts it.

- **TCP/TLS**: packets wait in a bounded queue (`queue_size` packets and `queue_bytes` bytes,
  `hep.packetqueue.PacketQueue`); the packets queued during one event-loop iteration go out
  joined in one write, by one callback right after it (a task writes the rest when the transport
  pushes back or a connection comes back). The transport's write buffer is bounded too: while it
  is above `write_buffer_limit` nothing more is written, so a collector that accepts and never
  reads fills the queue and then costs drops, not memory. A connection stuck like that for
  `stall_timeout` seconds is aborted and opened again. Connecting retries with capped
  exponential backoff (`backoff_initial` doubling up to `backoff_max`, ±20 % jitter). Packets
  queued while disconnected are sent once connected; queued packets lost with a connection that
  drops are not counted again (`sent` counts packets handed to the socket). A connection the
  collector closes at once (even before `create_connection` returns, which uvloop reports as an
  already-closed transport) is a lost connection like any other.
- A sender never stops on its own: whatever ends its task other than `aclose` (an exception,
  a bug) is logged with its traceback and counted (`restarts`), and the task starts again
  after a backoff.
- **UDP**: a connected, non-blocking datagram socket. `send` sends the datagram at once (one
  `send` syscall; `sendmmsg` gains nothing: on loopback the kernel's work per datagram
  dominates, measured in C). `send_packets` does the same for a list of packets in one call
  into C (`hep/_udpsend.c`: no Python call per datagram), with the same outcome. Datagrams
  the kernel refuses with EAGAIN wait in the same bounded queue until the socket is writable
  (and later ones queue behind them, in order). A collector that is down answers
  with ICMP port unreachable, which the kernel reports as ECONNREFUSED on a later send: the
  sender counts a send error, drops what is queued, and drops everything for a backoff period
  (doubling like TCP), then tries again. A slow UDP collector loses datagrams in its own
  receive buffer, which no sender can see.

- **TLS**: without an `ssl_context`, a sender builds one with `client_context` (TLS 1.2 and up,
  OpenSSL's default key-exchange groups, finite-field ones included); tlstrace passes its own,
  limited to its default groups (`tlstrace.preflight.sender_for`). This package never imports
  tlstrace.

`HepSenderGroup` holds several named senders.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hep.codec import PacketTemplate
from hep.destination import HepDestination, parse_hep_id
from hep.packetqueue import PacketQueue

_send_all: collections.abc.Callable[[int, list[bytes], int], tuple[int, int, int]] | None
try:  # the C loop of send_packets (setup.py builds it; see _udpsend.c)
    from hep._udpsend import send_all as _send_all
except ImportError:  # not built: one `send` per packet, which does the same
    _send_all = None

log = logging.getLogger("hep.sender")

_BATCH_BYTES = 65536
#: a sender that drops packets says so at most this often (seconds)
_DROP_LOG_INTERVAL = 10.0
_STABLE_AFTER = 5.0  # seconds a connection must live for the backoff to start again from low


@dataclass(frozen=True, slots=True)
class HepIdentity:
    """What a destination wants in the packets it gets: capture agent id (0x000c), auth key
    (0x000e) and node name (0x0013). Packets are encoded once per distinct identity."""

    capture_id: int = 0
    auth_key: bytes | None = None
    node_name: bytes | None = None

    def template(
        self,
        *,
        src_ip: str,
        dst_ip: str,
        src_port: int,
        dst_port: int,
        ip_proto: int,
        proto_type: int = 1,
    ) -> PacketTemplate:
        """A `PacketTemplate` for one flow, carrying this identity."""
        return PacketTemplate(
            src_ip=src_ip,
            dst_ip=dst_ip,
            src_port=src_port,
            dst_port=dst_port,
            ip_proto=ip_proto,
            proto_type=proto_type,
            capture_id=self.capture_id,
            auth_key=self.auth_key,
            node_name=self.node_name,
        )


@dataclass(frozen=True, slots=True)
class SenderStats:
    """A snapshot of one sender's counters."""

    name: str
    transport: str
    address: str
    #: packets handed to the socket (kernel or transport buffer)
    sent: int
    #: packets refused by `send` (queue full, disconnected too long, refused, closed)
    dropped: int
    #: failed socket sends and connections lost or aborted while sending
    send_errors: int
    #: failed connection attempts (refused, timed out, TLS verification failed, ...)
    connect_errors: int
    #: connection attempts after a failure or a lost connection
    reconnects: int
    bytes_sent: int
    queue_depth: int
    queue_bytes: int
    #: bytes in the transport's write buffer (TCP/TLS)
    buffered_bytes: int
    connected: bool
    #: "stopped", "resolving", "connecting", "connected", "backoff", "refused", "closed"
    state: str
    last_error: str | None
    #: times the sender's task ended unexpectedly and was started again
    restarts: int = 0


class Backoff:
    """Capped exponential backoff: `initial`, doubling up to `maximum`, each delay with
    ±`jitter` (a fraction) so that many senders do not retry in step."""

    def __init__(self, initial: float, maximum: float, jitter: float = 0.2) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.jitter = jitter
        self._next = initial

    def next(self) -> float:
        """The delay to wait now; the following one doubles (up to the cap)."""
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._next = self.initial


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, poke: collections.abc.Callable[[], None]) -> None:
        self.poke = poke
        self.paused = False
        self.lost = False
        self.exc: BaseException | None = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.poke()

    def data_received(self, data: bytes) -> None:
        pass  # collectors do not answer; ignore anything they send

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.exc = exc
        self.poke()


class HepSender:
    """Sends encoded HEP packets to one destination. Use from the event loop's thread."""

    def __init__(
        self,
        dest: HepDestination | str,
        *,
        identity: HepIdentity | None = None,
        queue_size: int = 4096,
        queue_bytes: int = 8 * 1024 * 1024,
        ca_file: str | Path | None = None,
        verify: bool = True,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        write_buffer_limit: int = 256 * 1024,
        stall_timeout: float = 30.0,
        flush_delay: float = 0.001,
    ) -> None:
        self.dest = parse_hep_id(dest) if isinstance(dest, str) else dest
        self.identity = identity or HepIdentity()
        if queue_size < 1 or queue_bytes < 1:
            raise ValueError("queue_size and queue_bytes must be at least 1")
        self.queue_size = queue_size
        self.queue_bytes_max = queue_bytes
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = max(backoff_max, backoff_initial)
        self.write_buffer_limit = write_buffer_limit
        self.stall_timeout = stall_timeout
        #: TCP/TLS: how long packets may gather before they are written (0: right after the
        #: loop iteration that queued the first)
        self.flush_delay = flush_delay
        self._ssl: ssl.SSLContext | None = None
        self._server_name = server_name or self.dest.host
        if self.dest.transport == "tls":
            self._ssl = ssl_context or client_context(ca_file, verify, cert_file, key_file)
        self._queue = PacketQueue(queue_size, queue_bytes)
        #: UDP: the socket while datagrams go straight out (open, nothing queued, not refused)
        self._direct: socket.socket | None = None
        #: TCP/TLS: the connection's protocol while connected
        self._proto: _StreamProtocol | None = None
        self._flush_pending = False
        self._sent = self._dropped = self._send_errors = self._connect_errors = 0
        self._reconnects = self._bytes = self._restarts = 0
        self._state = "stopped"
        self._last_error: str | None = None
        self._drops_logged_time = 0.0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        # True when the writer (TCP/TLS pump, or UDP flush) waits for data: `send` wakes it
        self._idle = False
        self._wake: collections.abc.Callable[[], None] = self._poke
        self._udp_blocked = False  # refused: drop until the backoff timer ends
        self._udp_writer = False
        self._udp_backoff = Backoff(self.backoff_initial, self.backoff_max)
        self._udp_ok = 0
        self._udp_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ public
    @property
    def name(self) -> str:
        return self.dest.name

    @property
    def stats(self) -> SenderStats:
        return SenderStats(
            name=self.dest.name,
            transport=self.dest.transport,
            address=self.dest.address,
            sent=self._sent,
            dropped=self._dropped,
            send_errors=self._send_errors,
            connect_errors=self._connect_errors,
            reconnects=self._reconnects,
            bytes_sent=self._bytes,
            queue_depth=len(self._queue),
            queue_bytes=self._queue.size,
            buffered_bytes=self._buffered(),
            connected=self.connected,
            state=self._state,
            last_error=self._last_error,
            restarts=self._restarts,
        )

    @property
    def connected(self) -> bool:
        if self.dest.transport == "udp":
            return self._sock is not None and not self._udp_blocked
        return self._state == "connected"

    async def start(self) -> None:
        """Start connecting in the background; returns at once (`wait_connected` waits)."""
        if self._task is not None or self._closing:
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._supervise(), name=f"hep-sender-{self.dest.name}")

    async def _supervise(self) -> None:
        """Run the sender's task; if it ends while the sender is not closing (an exception
        nobody expected, or a return), say so and run it again after a backoff."""
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while not self._closing:
            udp = self.dest.transport == "udp"
            try:
                await (self._run_udp() if udp else self._run_stream())
                if self._closing or (udp and self._sock is not None):
                    return  # UDP: the socket is open, callbacks do the rest
                why = "its task ended"
                exc: BaseException | None = None
            except asyncio.CancelledError:
                raise
            except Exception as e:
                why, exc = f"its task failed: {_describe(e)}", e
            self._restarts += 1
            self._last_error = why
            log.error(
                "HEP %s sender: %s (state %s); restarting it (%d so far)",
                self.dest.name,
                why,
                self._state,
                self._restarts,
                exc_info=exc,
            )
            t, self._transport = self._transport, None
            if t is not None:
                with contextlib.suppress(Exception):
                    t.abort()
            self._idle = False
            self._state = "backoff"
            await asyncio.sleep(backoff.next())

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until connected (UDP: the socket exists); False on timeout. For tests/tools."""
        deadline = time.monotonic() + timeout
        while not self.connected:
            if time.monotonic() >= deadline or self._closing:
                return False
            await asyncio.sleep(0.01)
        return True

    def send(self, data: bytes) -> bool:
        """Send (UDP) or queue one encoded packet. Never blocks, never raises; False =
        dropped (counted)."""
        sock = self._direct
        if sock is not None:
            try:
                sock.send(data)
            except Exception as e:
                return self._udp_send_failed(data, e)
            self._sent += 1
            self._bytes += len(data)
            if self._udp_ok < 2:
                self._udp_counted_ok()
            return True
        try:
            if self._closing or self._udp_blocked or not self._queue.add(data):
                self._dropped += 1
                self._log_drops()
                return False
            if self._idle:
                self._idle = False
                self._wake()
            return True
        except Exception as e:  # never into the caller
            self._dropped += 1
            self._last_error = _describe(e)
            return False

    def send_packets(self, packets: list[bytes]) -> None:
        """`send` for each packet, in order, with the same outcome (sent, queued or dropped,
        and counted alike). While UDP datagrams go straight out, one call into C sends them
        all (`hep._udpsend.send_all`, one `send` system call per datagram) instead of a
        Python call per packet."""
        i = 0
        n = len(packets)
        while i < n:
            sock = self._direct
            if sock is None or _send_all is None:
                for packet in packets[i:]:
                    self.send(packet)
                return
            try:
                done, size, err = _send_all(sock.fileno(), packets, i)
            except Exception:  # never into the caller: the plain path counts it
                self.send(packets[i])
                i += 1
                continue
            self._sent += done - i
            self._bytes += size
            ok = done - i
            while ok and self._udp_ok < 2:
                self._udp_counted_ok()
                ok -= 1
            if done >= n:
                return
            self._udp_send_failed(packets[done], OSError(err, os.strerror(err)))
            i = done + 1

    def _log_drops(self) -> None:
        """Say that packets are being dropped, at most once per _DROP_LOG_INTERVAL seconds."""
        now = time.monotonic()
        if self._drops_logged_time and now - self._drops_logged_time < _DROP_LOG_INTERVAL:
            return
        why = (
            "the collector refuses packets"
            if self._udp_blocked
            else "the queue is full (collector slow, stalled or unreachable)"
        )
        log.warning(
            "HEP %s dropping packets: %s; %d dropped so far (state %s)",
            self.dest.name,
            why,
            self._dropped,
            self._state,
        )
        self._drops_logged_time = now

    async def aclose(self, timeout: float = 1.0) -> None:
        """Stop: give queued packets up to `timeout` seconds to go out, then close.
        Packets still queued are counted as dropped."""
        if self._closing:
            return
        deadline = time.monotonic() + timeout
        while (
            (self._queue or self._buffered())
            and time.monotonic() < deadline
            and self._task is not None
            and not (self._task.done() and self._sock is None)
        ):
            await asyncio.sleep(0.01)
        self._closing = True
        self._direct = None
        self._idle = False
        self._poke()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        t, self._transport = self._transport, None
        if t is not None:
            t.abort()
        self._close_udp()
        self._dropped += self._queue.clear()
        self._state = "closed"

    # -------------------------------------------------------------- internals
    def _buffered(self) -> int:
        t = self._transport
        if t is None or t.is_closing():
            return 0
        try:
            return t.get_write_buffer_size()
        except Exception:
            return 0

    def _poke(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, timeout: float | None = None) -> None:
        assert self._loop is not None
        self._waiter = w = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._poke) if timeout is not None else None
        try:
            await w
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _fail(self, what: str, exc: BaseException) -> None:
        first = self._last_error is None or self._state == "connected"
        self._last_error = _describe(exc)
        (log.warning if first else log.debug)(
            "HEP %s %s (%s): %s", self.dest.name, what, self.dest.address, self._last_error
        )

    async def _retry_later(self, backoff: Backoff, what: str, exc: BaseException) -> None:
        """A connection (or socket) could not be made: count it, say so, wait to retry."""
        self._connect_errors += 1
        self._fail(what, exc)
        self._state = "backoff"
        await asyncio.sleep(backoff.next())

    # ---------------------------------------------------------------- TCP/TLS
    async def _run_stream(self) -> None:
        assert self._loop is not None
        loop = self._loop
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        attempts = 0
        while not self._closing:
            if attempts:
                self._reconnects += 1
            attempts += 1
            self._state = "connecting"
            proto = _StreamProtocol(self._poke)
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda p=proto: p,
                        self.dest.host,
                        self.dest.port,
                        ssl=self._ssl,
                        server_hostname=self._server_name if self._ssl else None,
                    ),
                    self.connect_timeout,
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await self._retry_later(backoff, "connect failed", e)
                continue
            since = time.monotonic()
            try:
                if proto.lost or transport.is_closing():
                    # closed by the collector before we got the transport (uvloop hands it
                    # over closed): a connection lost, not a reason to stop
                    proto.lost = True
                else:
                    transport.set_write_buffer_limits(high=self.write_buffer_limit)
                    self._transport = transport
                    self._proto = proto
                    self._state = "connected"
                    log.info(
                        "HEP %s connected to %s over %s",
                        self.dest.name,
                        self.dest.address,
                        self.dest.transport,
                    )
                await self._pump(transport, proto)
            finally:
                self._transport = None
                self._proto = None
                if not transport.is_closing():
                    transport.abort()
            if self._closing:
                return
            if time.monotonic() - since >= _STABLE_AFTER:
                backoff.reset()
            self._state = "backoff"
            await asyncio.sleep(backoff.next())

    async def _pump(self, transport: asyncio.Transport, proto: _StreamProtocol) -> None:
        queue = self._queue
        self._wake = self._stream_schedule
        batch_max = max(_BATCH_BYTES, self.write_buffer_limit)
        paused_since: float | None = None
        while True:
            if proto.lost or self._closing:
                if proto.lost and not self._closing:
                    self._send_errors += 1
                    self._fail("connection lost", proto.exc or ConnectionError("closed by peer"))
                return
            if proto.paused:
                now = time.monotonic()
                if paused_since is None:
                    paused_since = now
                elif now - paused_since >= self.stall_timeout:
                    self._send_errors += 1
                    self._fail(
                        "stalled",
                        TimeoutError(f"the collector read nothing for {self.stall_timeout:g} s"),
                    )
                    transport.abort()
                    return
                await self._wait(self.stall_timeout - (now - paused_since))
                continue
            paused_since = None
            if not queue:
                self._idle = True
                await self._wait()
                self._idle = False
                continue
            if not self._write_batch(transport, batch_max):
                return
            await asyncio.sleep(0)  # let the relay run between batches

    def _write_batch(self, transport: asyncio.Transport, batch_max: int) -> bool:
        """Write the oldest queued packets (whole, up to `batch_max` bytes) in one write;
        False when the write failed (the connection is aborted, the batch counted dropped)."""
        data, n = self._queue.take(batch_max)
        try:
            transport.write(data)
        except Exception as e:
            self._send_errors += 1
            self._dropped += n
            self._fail("write failed", e)
            transport.abort()
            return False
        self._sent += n
        self._bytes += len(data)
        return True

    def _stream_schedule(self) -> None:
        """`send` found the writer idle: write what is queued from now to `flush_delay` later
        in one write (one callback, however many packets)."""
        if not self._flush_pending and self._loop is not None:
            self._flush_pending = True
            if self.flush_delay > 0:
                self._loop.call_later(self.flush_delay, self._stream_flush)
            else:
                self._loop.call_soon(self._stream_flush)

    def _stream_flush(self) -> None:
        """The queued packets in one write when the connection takes them at once; otherwise
        (pushed back, lost, more than a batch) the task takes over."""
        self._flush_pending = False
        try:
            transport, proto = self._transport, self._proto
            if (
                transport is not None
                and proto is not None
                and not (proto.paused or proto.lost or self._closing)
                and self._queue
            ):
                self._write_batch(transport, max(_BATCH_BYTES, self.write_buffer_limit))
            if self._queue or transport is None or proto is None or proto.paused or proto.lost:
                self._poke()
            else:
                self._idle = True
        except Exception as e:  # a loop callback must not raise
            self._fail("flush failed", e)
            self._poke()

    # -------------------------------------------------------------------- UDP
    async def _run_udp(self) -> None:
        assert self._loop is not None
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while not self._closing:
            self._state = "resolving"
            try:
                infos = await asyncio.wait_for(
                    self._loop.getaddrinfo(
                        self.dest.host,
                        self.dest.port,
                        type=socket.SOCK_DGRAM,
                    ),
                    self.connect_timeout,
                )
                family, kind, proto, _, addr = infos[0]
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    sock.connect(addr)
                except BaseException:
                    sock.close()
                    raise
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await self._retry_later(backoff, "cannot open the UDP socket", e)
                self._reconnects += 1
                continue
            self._sock = sock
            self._state = "connected"
            self._udp_flush()  # what was queued before the socket existed
            return

    def _udp_counted_ok(self) -> None:
        """A datagram went out: two in a row end a refusal's backoff."""
        self._udp_ok += 1
        if self._udp_ok == 2:
            self._udp_backoff.reset()
            if self._state == "refused":
                self._state = "connected"

    def _udp_send_failed(self, data: bytes, exc: Exception) -> bool:
        """`send`'s datagram did not go out: EAGAIN queues it (and the datagrams after it)
        until the socket is writable; a refusal drops it and starts a backoff; any other
        error drops it."""
        if isinstance(exc, BlockingIOError):
            self._direct = None
            if not self._queue.add(data):
                self._dropped += 1
                self._log_drops()
                return False
            self._udp_want_writable()
            return True
        self._dropped += 1
        if isinstance(exc, ConnectionRefusedError):
            self._udp_refused(exc)
        elif isinstance(exc, OSError):
            self._send_errors += 1
            self._fail("send failed", exc)
        else:  # never into the caller
            self._last_error = _describe(exc)
        return False

    def _udp_want_writable(self) -> None:
        if not self._udp_writer and self._loop is not None and self._sock is not None:
            self._loop.add_writer(self._sock, self._udp_flush)
            self._udp_writer = True

    def _udp_flush(self) -> None:
        """Write the queued datagrams (after the socket opens, or when it is writable again);
        once none is left, `send` sends straight again."""
        sock = self._sock
        queue = self._queue
        try:
            while queue and sock is not None:
                data = queue.first()
                try:
                    sock.send(data)
                except BlockingIOError:
                    self._udp_want_writable()
                    return
                except ConnectionRefusedError as e:
                    self._udp_refused(e)
                    break
                except OSError as e:
                    self._send_errors += 1
                    self._dropped += 1
                    self._fail("send failed", e)
                else:
                    self._sent += 1
                    self._bytes += len(data)
                    self._udp_counted_ok()
                queue.pop()
        except Exception as e:  # a loop callback must not raise
            self._fail("flush failed", e)
        self._udp_stop_writer()
        self._udp_go_direct()

    def _udp_go_direct(self) -> None:
        if not (self._queue or self._udp_blocked or self._closing):
            self._direct = self._sock

    def _udp_refused(self, exc: OSError) -> None:
        """The collector's port is closed: drop what is queued, then everything for a while."""
        self._direct = None
        self._send_errors += 1
        self._fail("refused", exc)
        self._dropped += self._queue.clear()
        self._udp_ok = 0
        self._udp_blocked = True
        self._state = "refused"
        assert self._loop is not None
        self._udp_timer = self._loop.call_later(self._udp_backoff.next(), self._udp_unblock)

    def _udp_unblock(self) -> None:
        self._udp_timer = None
        if not self._closing:
            self._udp_blocked = False
            self._reconnects += 1
            self._udp_go_direct()

    def _udp_stop_writer(self) -> None:
        if self._udp_writer and self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self._sock)
        self._udp_writer = False

    def _close_udp(self) -> None:
        self._idle = False
        self._direct = None
        if self._udp_timer is not None:
            self._udp_timer.cancel()
            self._udp_timer = None
        self._udp_stop_writer()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def client_context(
    ca_file: str | Path | None,
    verify: bool,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> ssl.SSLContext:
    """The TLS client context a sender builds when it is given none (TLS 1.2 and up; the
    collector's certificate checked against `ca_file` unless `verify` is false). It offers
    OpenSSL's default key-exchange groups, finite-field ones included: an application that
    can set the groups (tlstrace does, in `tlstrace.preflight`) builds it with this, sets them
    and passes it as `ssl_context`. This package does not import tlstrace."""
    if verify:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


class HepSenderGroup:
    """Several named senders: start, send and close them together."""

    def __init__(self, senders: Iterable[HepSender] = ()) -> None:
        self._senders: dict[str, HepSender] = {}
        for s in senders:
            self.add(s)

    @classmethod
    def from_ids(cls, hep_ids: Iterable[str | HepDestination], **options: object) -> HepSenderGroup:
        """One sender per `hep_id` (or destination), all with the same `HepSender` options."""
        return cls(HepSender(d, **options) for d in hep_ids)  # type: ignore[arg-type]

    def add(self, sender: HepSender) -> None:
        if sender.name in self._senders:
            raise ValueError(f"a HEP destination named {sender.name!r} already exists")
        self._senders[sender.name] = sender

    @property
    def names(self) -> list[str]:
        return list(self._senders)

    @property
    def identities(self) -> list[HepIdentity]:
        """The distinct identities, in the order of the senders."""
        return list(dict.fromkeys(s.identity for s in self._senders.values()))

    def __getitem__(self, name: str) -> HepSender:
        return self._senders[name]

    def __contains__(self, name: object) -> bool:
        return name in self._senders

    def __iter__(self) -> Iterator[HepSender]:
        return iter(self._senders.values())

    def __len__(self) -> int:
        return len(self._senders)

    async def start(self) -> None:
        for s in self._senders.values():
            await s.start()

    async def aclose(self, timeout: float = 1.0) -> None:
        await asyncio.gather(*(s.aclose(timeout) for s in self._senders.values()))

    def send_to(self, name: str, data: bytes) -> bool:
        """Send to one destination; False when dropped or when there is no such name."""
        s = self._senders.get(name)
        return s.send(data) if s is not None else False

    def send_all(self, data: bytes) -> int:
        """Send the same bytes to every destination; returns how many accepted them."""
        return sum(s.send(data) for s in self._senders.values())

    def send_identity(self, identity: HepIdentity, data: bytes) -> int:
        """Send to the destinations with `identity` (encode once per identity)."""
        return sum(s.send(data) for s in self._senders.values() if s.identity == identity)

    def stats(self) -> dict[str, SenderStats]:
        return {name: s.stats for name, s in self._senders.items()}
