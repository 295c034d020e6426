"""A HEP receiver for users: `tlstrace hep-listen udp:HOST:PORT [--pcap FILE]`.

`serve()` is the reusable async part (the demo and the tests use it); `run()` is the blocking
CLI entry: one JSON line per packet on stdout (see `packet_json`), undecodable input as a
JSON line with an "error" key, and the payloads in a pcap file with `--pcap`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from hep.address import join_host_port, split_host_port
from hep.codec import HepDecodeError, HepPacket, StreamDecoder, decode

log = logging.getLogger("hep.listen")

#: Payload types by number (hep.md §1.4; 100 is Homer's "LOG").
PROTO_TYPE_NAMES: dict[int, str] = {
    1: "SIP",
    2: "XMPP",
    3: "SDP",
    4: "RTP",
    5: "RTCP",
    6: "MGCP",
    7: "MEGACO",
    8: "M2UA",
    9: "M3UA",
    10: "IAX",
    11: "H3222",
    12: "H321",
    13: "M2PA",
    34: "MOS full report",
    35: "MOS short report",
    50: "SIP JSON",
    53: "DNS JSON",
    54: "M3UA JSON",
    55: "RTSP",
    56: "DIAMETER",
    57: "GSM MAP",
    58: "RTCP PION",
    60: "CDR",
    61: "Verto",
    100: "LOG",
}

ListenTransport = Literal["udp", "tcp"]
_UDP_RCVBUF = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ListenAddress:
    transport: ListenTransport
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{join_host_port(self.host, self.port)}"


def parse_listen_address(text: str) -> ListenAddress:
    """`udp:HOST:PORT` or `tcp:HOST:PORT` (IPv6 in brackets; port 0 picks a free one)."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("udp", "tcp"):
        raise ValueError(f"{text!r} must look like udp:HOST:PORT or tcp:HOST:PORT")
    try:
        host, port_text = split_host_port(rest, "udp:[::1]:9060")
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    if not host:
        raise ValueError(f"{text!r}: the host is missing")
    if port_text is None or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return ListenAddress(transport, host, int(port_text))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Received:
    """Where and when a packet (or undecodable data) came from."""

    transport: ListenTransport
    peer: tuple[str, int]
    size: int
    time: float


PacketCallback = Callable[[HepPacket, Received], None]
ErrorCallback = Callable[[HepDecodeError, bytes, Received], None]


@dataclass
class HepServer:
    """A running receiver; `close()` stops it. `address` has the real port."""

    address: ListenAddress
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _waits: list[Callable[[], Any]] = field(default_factory=list)
    packets: int = 0
    errors: int = 0

    def close(self) -> None:
        for c in self._closers:
            with contextlib.suppress(Exception):
                c()
        self._closers.clear()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        for w in self._waits:
            with contextlib.suppress(Exception):
                await w()

    async def __aenter__(self) -> HepServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _deliver(
    server: HepServer,
    data: bytes,
    info: Received,
    on_packet: PacketCallback,
    on_error: ErrorCallback | None,
) -> None:
    try:
        packet = decode(data)
    except HepDecodeError as e:
        server.errors += 1
        if on_error is not None:
            try:
                on_error(e, data, info)
            except Exception:
                log.exception("HEP error callback failed")
        return
    server.packets += 1
    try:
        on_packet(packet, info)
    except Exception:
        log.exception("HEP packet callback failed")


class _Udp(asyncio.DatagramProtocol):
    def __init__(
        self, server: HepServer, on_packet: PacketCallback, on_error: ErrorCallback | None
    ) -> None:
        self.server, self.on_packet, self.on_error = server, on_packet, on_error

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        info = Received("udp", (str(addr[0]), int(addr[1])), len(data), time.time())
        _deliver(self.server, data, info, self.on_packet, self.on_error)

    def error_received(self, exc: Exception) -> None:
        log.debug("HEP UDP receive error: %s", exc)


class _Tcp(asyncio.Protocol):
    def __init__(
        self,
        server: HepServer,
        on_packet: PacketCallback,
        on_error: ErrorCallback | None,
        connections: set[asyncio.Transport],
    ) -> None:
        self.server, self.on_packet, self.on_error = server, on_packet, on_error
        self.connections = connections
        self.decoder = StreamDecoder()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.connections.add(self.transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.frames(data)
        except HepDecodeError as e:
            self.server.errors += 1
            info = Received("tcp", self.peer, self.decoder.pending, time.time())
            if self.on_error is not None:
                with contextlib.suppress(Exception):
                    self.on_error(e, data, info)
            if self.transport is not None:
                self.transport.close()
            return
        now = time.time()
        for frame in frames:
            info = Received("tcp", self.peer, len(frame), now)
            _deliver(self.server, frame, info, self.on_packet, self.on_error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.connections.discard(self.transport)


async def serve(
    address: str | ListenAddress, on_packet: PacketCallback, on_error: ErrorCallback | None = None
) -> HepServer:
    """Receive HEP on `address` and call `on_packet(packet, received)` for each packet (and
    `on_error(error, data, received)` for what does not decode). Raises OSError when the
    address cannot be bound."""
    addr = parse_listen_address(address) if isinstance(address, str) else address
    loop = asyncio.get_running_loop()
    if addr.transport == "udp":
        server = HepServer(addr)
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(server, on_packet, on_error),
            local_addr=(addr.host, addr.port),
            family=family,
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
            port = sock.getsockname()[1]
        else:  # pragma: no cover
            port = addr.port
        server.address = ListenAddress("udp", addr.host, port)
        server._closers.append(transport.close)
        return server
    connections: set[asyncio.Transport] = set()
    server = HepServer(addr)
    srv = await loop.create_server(
        lambda: _Tcp(server, on_packet, on_error, connections),
        addr.host,
        addr.port,
        reuse_address=True,
    )
    port = srv.sockets[0].getsockname()[1] if srv.sockets else addr.port
    server.address = ListenAddress("tcp", addr.host, port)

    def close_tcp() -> None:
        srv.close()
        for t in list(connections):
            t.close()

    server._closers.append(close_tcp)
    server._waits.append(srv.wait_closed)
    return server


# ------------------------------------------------------------------- JSON lines
def _octets(value: bytes | None) -> str | dict[str, str] | None:
    """Text when the bytes are UTF-8, else {"base64": ...}."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def packet_json(p: HepPacket, info: Received | None = None) -> dict[str, Any]:
    """Every chunk of `p` as JSON-ready values. Octet strings (auth key, correlation id,
    node name, payload) are text when they are UTF-8, else {"base64": "..."}."""
    when = dt.datetime.fromtimestamp(p.ts_sec, dt.UTC).replace(microsecond=p.ts_usec)
    out: dict[str, Any] = {}
    if info is not None:
        out |= {
            "received": round(info.time, 6),
            "transport": info.transport,
            "peer": f"{info.peer[0]}:{info.peer[1]}",
            "size": info.size,
        }
    out |= {
        "family": p.family,
        "ip_proto": p.ip_proto,
        "src_ip": p.src_ip,
        "src_port": p.src_port,
        "dst_ip": p.dst_ip,
        "dst_port": p.dst_port,
        "ts_sec": p.ts_sec,
        "ts_usec": p.ts_usec,
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "proto_type": p.proto_type,
        "proto_name": PROTO_TYPE_NAMES.get(p.proto_type),
        "capture_id": p.capture_id,
        "keep_alive": p.keep_alive,
        "auth_key": _octets(p.auth_key),
        "correlation_id": _octets(p.correlation_id),
        "vlan": p.vlan,
        "node_name": _octets(p.node_name),
        "unknown": [{"vendor": c.vendor, "type": c.type, "hex": c.body.hex()} for c in p.unknown],
        "payload": _octets(p.payload),
    }
    return out


def error_json(error: HepDecodeError, data: bytes, info: Received) -> dict[str, Any]:
    return {
        "received": round(info.time, 6),
        "transport": info.transport,
        "peer": f"{info.peer[0]}:{info.peer[1]}",
        "size": len(data),
        "error": str(error),
        "hex": data[:512].hex(),
    }


# ------------------------------------------------------------------------ CLI
def run(address: str, pcap: Path | None) -> int:
    """`tlstrace hep-listen`: print one JSON line per packet until SIGINT/SIGTERM."""
    try:
        addr = parse_listen_address(address)
    except ValueError as e:
        print(f"tlstrace hep-listen: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(addr, pcap))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


async def _main(addr: ListenAddress, pcap: Path | None) -> int:
    from hep.pcap import PcapWriter

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        writer = PcapWriter(pcap) if pcap is not None else None
    except OSError as e:
        print(f"tlstrace hep-listen: cannot write {pcap}: {e}", file=sys.stderr)
        return 1
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        try:
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            out.flush()
        except (BrokenPipeError, ValueError):  # the reader went away
            stop.set()

    def on_packet(p: HepPacket, info: Received) -> None:
        if writer is not None:
            writer.write(p)
        emit(packet_json(p, info))

    def on_error(e: HepDecodeError, data: bytes, info: Received) -> None:
        emit(error_json(e, data, info))

    try:
        server = await serve(addr, on_packet, on_error)
    except OSError as e:
        print(f"tlstrace hep-listen: cannot listen on {addr}: {e}", file=sys.stderr)
        if writer is not None:
            writer.close()
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening for HEP on %s%s", server.address, f", writing payloads to {pcap}" if pcap else ""
    )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        server.close()
        await server.wait_closed()
        if writer is not None:
            writer.close()
        log.info("stopped: %d packets, %d undecodable", server.packets, server.errors)
    with contextlib.suppress(Exception):
        out.flush()
    return 0


class Collector:
    """Collects packets from `serve()`: `await collector.wait(n)`. For tests and the demo."""

    def __init__(self) -> None:
        self.packets: list[tuple[HepPacket, Received]] = []
        self.errors: list[tuple[HepDecodeError, bytes, Received]] = []
        self._changed = asyncio.Event()

    def on_packet(self, packet: HepPacket, info: Received) -> None:
        self.packets.append((packet, info))
        self._changed.set()

    def on_error(self, error: HepDecodeError, data: bytes, info: Received) -> None:
        self.errors.append((error, data, info))
        self._changed.set()

    async def wait(self, count: int, timeout: float = 5.0) -> list[HepPacket]:
        """Wait until `count` packets arrived; return all packets so far (TimeoutError)."""
        async with asyncio.timeout(timeout):
            while len(self.packets) < count:
                self._changed.clear()
                await self._changed.wait()
        return [p for p, _ in self.packets]
