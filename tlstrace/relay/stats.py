"""Relay counters kept as plain integers on the hot path; the metrics module exports them."""

from __future__ import annotations

import bisect
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field


class Histogram:
    """Cumulative-bucket histogram with Prometheus semantics, cheap to observe."""

    __slots__ = ("bounds", "counts", "sum", "tick")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.tick = 0  # for callers that sample

    def sample(self, started: float) -> None:
        """Observe the time since `started` (perf_counter) for one call in four: enough for
        the distribution, a quarter of the cost."""
        self.tick += 1
        if not self.tick & 3:
            self.observe(time.perf_counter() - started)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


def _handshake_histogram() -> Histogram:
    return Histogram((0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))


#: version and cipher labels of a failed handshake: nothing was negotiated
NOT_NEGOTIATED = "none"


@dataclass
class RelayStats:
    """Counters by listener (its address as configured, e.g. "tls:127.0.0.1:5061") where a
    connection has one: keyed per connection, so a leg looks its counters up once."""

    #: (listener address, the directions its connections can have): the series exported at 0
    #: from the start
    listeners: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)  # by listener
    refused: Counter[str] = field(default_factory=Counter)  # over tcp_max_connections
    rate_limited: Counter[str] = field(default_factory=Counter)  # handshake_rate_per_source
    outbound_opened: Counter[str] = field(default_factory=Counter)
    closed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (listener, reason)
    #: (listener, direction, result, version, cipher); failures have version and cipher
    #: NOT_NEGOTIATED and are also counted by reason:
    handshakes: Counter[tuple[str, str, str, str, str]] = field(default_factory=Counter)
    handshake_failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: successful handshakes' durations by (listener, direction)
    handshake_seconds: defaultdict[tuple[str, str], Histogram] = field(
        default_factory=lambda: defaultdict(_handshake_histogram)
    )
    #: messages by (listener, direction: from_client, to_client, ...) then method or status
    #: class
    messages: defaultdict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (listener, direction)
    framing_errors: Counter[str] = field(default_factory=Counter)
    keepalives: Counter[str] = field(default_factory=Counter)  # ping, pong, crlf_relayed, dropped
    relay_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            (
                0.00005,
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                1.0,
            )
        )
    )
    dropped_messages: Counter[str] = field(default_factory=Counter)
    #: bytes accepted for a peer that stopped reading, thrown away with its connection
    bytes_dropped: Counter[str] = field(default_factory=Counter)
    backend_connect_failures: int = 0
    #: messages from a tcp: listener's peer, by how their local connection was found
    trunk_routed: Counter[str] = field(default_factory=Counter)
    reloads: Counter[str] = field(default_factory=Counter)  # success, failure
    #: API connections refused at accept, by reason (limit, fd_reserve), and closed for
    #: sending no complete request in time
    api_refused: Counter[str] = field(default_factory=Counter)
    api_timeouts: int = 0
    #: listeners uvloop stopped after a failed accept (out of descriptors), by listener
    accept_failures: Counter[str] = field(default_factory=Counter)
    #: times the process ran out of file descriptors (accepts fail: libuv closes them)
    fd_exhausted: int = 0
    #: WebSocket connections refused (an HTTP status or a close code), by (listener, reason)
    ws_refused: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # every label value known in advance starts at 0, so that rate() and increase() see
        # the first event (a series that appears at 1 hides it)
        from tlstrace.relay.connection import CloseReason
        from tlstrace.sip.framing import FramingErrorKind
        from tlstrace.tls.failures import HandshakeFailure
        from tlstrace.ws.framer import WsRefusal

        for reason in CloseReason:
            self.dropped_messages[reason.label] += 0
        for listener, directions in self.listeners:
            for reason in CloseReason:
                self.closed[listener, reason.label] += 0
            for name in ("from_tls", "to_tls"):
                self.bytes[listener, name] += 0
            # (at 0 on every listener, so a panel summing them always has a series)
            self.accepted[listener] += 0
            self.refused[listener] += 0
            self.rate_limited[listener] += 0
            self.outbound_opened[listener] += 0
            if listener.startswith(("wss:", "ws:")):
                for refusal in WsRefusal:
                    self.ws_refused[listener, refusal.value] += 0
            for direction in directions:
                self.handshakes[listener, direction, "failure", NOT_NEGOTIATED, NOT_NEGOTIATED] += 0
                self.handshake_seconds.setdefault((listener, direction), _handshake_histogram())
                for failure in HandshakeFailure:
                    self.handshake_failures[listener, direction, failure.value] += 0
        self.bytes_dropped[CloseReason.SEND_TIMEOUT.label] += 0
        for name in (
            "peer_unreachable",
            "no_local_connection",
            "unmatched_response",
            "local_target_unreachable",
        ):
            self.dropped_messages[name] += 0
        for kind in FramingErrorKind:
            for prefix in ("", "backend_", "local_"):
                self.framing_errors[prefix + kind.value] += 0
        for name in ("message_timeout", "backend_message_timeout", "local_message_timeout"):
            self.framing_errors[name] += 0
        for name in ("ping", "crlf_relayed", "crlf_dropped"):
            self.keepalives[name] += 0
        for name in ("success", "failure"):
            self.reloads[name] += 0
        for name in ("transaction", "peer_transaction", "dialog", "local_target", "latest"):
            self.trunk_routed[name] += 0
        for name in ("limit", "fd_reserve"):
            self.api_refused[name] += 0

    def handshake_failed(self, listener: str, direction: str, reason: str) -> None:
        self.handshake_failures[listener, direction, reason] += 1
        self.handshakes[listener, direction, "failure", NOT_NEGOTIATED, NOT_NEGOTIATED] += 1
