"""A per-source-address rate of new TLS connections (`handshake_rate_per_source`).

What HAProxy's stick tables (`sc_conn_rate`) and Kamailio's pike module do: each source
address may open `burst` connections at once and then `rate` a second; more are refused at
accept, before OpenSSL sees a byte. Sans-IO: the caller passes the clock in.

Each source costs one float (the generic cell rate algorithm, GCRA: the time at which its
bucket is full again), and at most `max_sources` sources are tracked: the one seen longest
ago makes room for a new one when its bucket has refilled (so it loses nothing). When even
that one is still over its rate, the table is full of limited sources (an attack spread over
more sources than it holds): the newcomer is not tracked but checked against one bucket that
all such newcomers share, `OVERFLOW_FACTOR` times the per-source rate and burst, so rotating
sources cannot get a fresh burst each. IPv6 sources count per /64 (one host's usual
allocation), IPv4-mapped IPv6 addresses as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass

from tlstrace.config import Config
from tlstrace.relay.stats import RelayStats

log = logging.getLogger("tlstrace.relay")

#: Seconds between two log lines about refused connections.
LOG_INTERVAL = 10.0


def source_key(address: str) -> str:
    """What one source is: the IPv4 address, or the /64 of an IPv6 address."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


#: the bucket that sources not in the table share while every tracked source is still over
#: its rate: this many times the per-source rate and burst
OVERFLOW_FACTOR = 16


class SourceRateLimiter:
    """GCRA per source, bounded to `max_sources` tracked sources (least recently seen go)."""

    __slots__ = (
        "burst",
        "evicted",
        "interval",
        "max_sources",
        "overflow_at",
        "overflow_interval",
        "overflow_tolerance",
        "overflowed",
        "tolerance",
        "tracked",
    )

    def __init__(self, rate: float, burst: int, max_sources: int) -> None:
        if not 0 < rate < float("inf") or burst < 1 or max_sources < 1:
            raise ValueError("0 < rate < inf, burst >= 1 and max_sources >= 1 are needed")
        self.burst = burst
        self.interval = 1.0 / rate
        # (a hair over, so that rounding never refuses the last connection of a burst)
        self.tolerance = (burst - 1) * self.interval + 1e-9
        self.max_sources = max_sources
        #: source -> when its bucket is full again; in order of last sight (oldest first)
        self.tracked: OrderedDict[str, float] = OrderedDict()
        #: sources forgotten to make room (their buckets had refilled: they lost nothing)
        self.evicted = 0
        # the shared bucket of sources that find the table full of limited sources (an attack
        # spread over more sources than the table holds): forgetting a limited source to make
        # room would give it a new burst, and rotating sources would never be limited
        self.overflow_interval = self.interval / OVERFLOW_FACTOR
        self.overflow_tolerance = (burst * OVERFLOW_FACTOR - 1) * self.overflow_interval + 1e-9
        self.overflow_at = float("-inf")
        #: connections checked against the shared bucket
        self.overflowed = 0

    def allow(self, source: str, now: float) -> bool:
        """Whether `source` may open one more connection at `now` (seconds, monotonic)."""
        tracked = self.tracked
        full_at = tracked.get(source)
        if full_at is None:
            if len(tracked) >= self.max_sources:
                if next(iter(tracked.values())) > now:
                    return self._overflow(now)
                tracked.popitem(last=False)
                self.evicted += 1
            full_at = now
        else:
            tracked.move_to_end(source)
            if full_at < now:
                full_at = now
        if full_at - now > self.tolerance:
            tracked[source] = full_at  # refused: nothing spent, but seen just now
            return False
        tracked[source] = full_at + self.interval
        return True

    def _overflow(self, now: float) -> bool:
        self.overflowed += 1
        full_at = max(self.overflow_at, now)
        if full_at - now > self.overflow_tolerance:
            return False
        self.overflow_at = full_at + self.overflow_interval
        return True

    def __len__(self) -> int:
        return len(self.tracked)


@dataclass
class HandshakeGate:
    """The relay's side of the limiter: refusals are counted, and logged at most once per
    LOG_INTERVAL with how many there were since the previous line."""

    limiter: SourceRateLimiter
    stats: RelayStats
    rate: float
    last_log: float = float("-inf")
    unlogged: int = 0

    @classmethod
    def from_config(
        cls, config: Config, stats: RelayStats, current: HandshakeGate | None = None
    ) -> HandshakeGate | None:
        """The gate `config` asks for (None: no limit); `current` is kept, with what it
        tracks, when its settings did not change (a reload)."""
        rate = config.handshake_rate_per_source
        if not rate:
            return None
        burst, sources = config.handshake_rate_burst, config.handshake_rate_sources
        if current is not None and (
            current.rate,
            current.limiter.burst,
            current.limiter.max_sources,
        ) == (rate, burst, sources):
            return current
        return cls(SourceRateLimiter(rate, burst, sources), stats, rate)

    def admit(self, address: str, now: float, listener: str) -> bool:
        """False (and counted, maybe logged) when `address` is over its rate."""
        if self.limiter.allow(source_key(address), now):
            return True
        self.stats.rate_limited[listener] += 1
        self.unlogged += 1
        if now - self.last_log >= LOG_INTERVAL:
            more = self.unlogged - 1
            log.warning(
                "refusing new connections from %s on %s: over handshake_rate_per_source"
                " (%g/s, burst %d)%s",
                address,
                listener,
                self.rate,
                self.limiter.burst,
                f"; {more} more refused since the last such line" if more else "",
            )
            self.last_log = now
            self.unlogged = 0
        return False
