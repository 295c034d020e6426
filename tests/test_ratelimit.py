"""The per-source rate of new connections (`handshake_rate_per_source`), sans-IO: the clock is
passed in, no socket is opened. The relay side is tested in tests/hardening."""

from __future__ import annotations

import logging
import sys

import pytest

from tlstrace.config import Config, ConfigError
from tlstrace.config.load import validate
from tlstrace.relay.ratelimit import (
    LOG_INTERVAL,
    OVERFLOW_FACTOR,
    HandshakeGate,
    SourceRateLimiter,
    source_key,
)
from tlstrace.relay.stats import RelayStats


def admitted(limiter: SourceRateLimiter, source: str, now: float, n: int) -> int:
    return sum(limiter.allow(source, now) for _ in range(n))


def test_a_burst_then_the_rate() -> None:
    lim = SourceRateLimiter(rate=2.0, burst=5, max_sources=100)
    assert admitted(lim, "192.0.2.1", 100.0, 20) == 5
    # half a second later: one more (2 a second)
    assert admitted(lim, "192.0.2.1", 100.5, 20) == 1
    assert admitted(lim, "192.0.2.1", 100.74, 20) == 0
    assert admitted(lim, "192.0.2.1", 101.0, 20) == 1
    # a steady 2 a second is always admitted
    for i in range(1, 100):
        assert lim.allow("192.0.2.1", 101.0 + i * 0.5)
    # idle long enough: a whole burst again, never more
    assert admitted(lim, "192.0.2.1", 1000.0, 20) == 5


@pytest.mark.parametrize(("rate", "burst"), [(3.0, 7), (0.1, 1), (1000.0, 64), (7.0, 3)])
def test_exactly_burst_at_once_whatever_the_rounding(rate: float, burst: int) -> None:
    lim = SourceRateLimiter(rate, burst, 10)
    assert admitted(lim, "a", 12345.678, burst + 10) == burst


def test_refusals_spend_nothing() -> None:
    lim = SourceRateLimiter(rate=1.0, burst=1, max_sources=10)
    assert lim.allow("a", 0.0)
    for i in range(1, 100):  # hammering while refused does not push the next slot further
        assert not lim.allow("a", i / 100)
    assert lim.allow("a", 1.0)


def test_sources_are_independent() -> None:
    lim = SourceRateLimiter(rate=1.0, burst=2, max_sources=10)
    assert admitted(lim, "192.0.2.1", 0.0, 10) == 2
    assert admitted(lim, "192.0.2.2", 0.0, 10) == 2
    assert admitted(lim, "2001:db8::1", 0.0, 10) == 2


def test_memory_is_bounded_and_rotating_sources_share_one_bucket() -> None:
    """1,000 sources rotating against a table of 3 (an attack spread over more sources than
    the table holds, e.g. many IPv6 /64s): the table stays at 3, no limited source is
    forgotten (which would give it a fresh burst), and the newcomers share one bucket of
    OVERFLOW_FACTOR times the rate and burst."""
    lim = SourceRateLimiter(rate=1.0, burst=1, max_sources=3)
    admitted = 0
    for rnd in range(3):
        for i in range(1000):
            admitted += lim.allow(f"10.0.{i // 256}.{i % 256}", rnd * 0.01)
            assert len(lim) <= 3
    assert lim.evicted == 0
    assert admitted == 3 + OVERFLOW_FACTOR
    # once the tracked sources have refilled, the oldest makes room (losing nothing)
    assert lim.allow("10.9.9.9", 5.0)
    assert lim.evicted == 1


def test_a_refused_source_counts_as_seen() -> None:
    lim = SourceRateLimiter(rate=1.0, burst=1, max_sources=2)
    assert lim.allow("attacker", 0.0)
    assert lim.allow("phone", 0.0)
    assert not lim.allow("attacker", 0.5)  # seen again: now "phone" is the oldest
    assert lim.allow("newcomer", 2.0)  # phone's bucket has refilled: it goes
    assert "phone" not in lim.tracked and "attacker" in lim.tracked
    assert lim.allow("attacker", 2.0)  # its own bucket has refilled too


def test_the_table_stays_small() -> None:
    lim = SourceRateLimiter(rate=1.0, burst=1, max_sources=65536)
    for i in range(65536):
        lim.allow(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", float(i))
    size = sys.getsizeof(lim.tracked) + sum(
        sys.getsizeof(k) + sys.getsizeof(v) for k, v in lim.tracked.items()
    )
    assert size < 16 * 1024 * 1024, size  # about 7.5 MB for the default 65,536 sources


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_what_one_source_is(address: str, key: str) -> None:
    assert source_key(address) == key


def test_off_by_default_and_the_keys_are_checked() -> None:
    c = Config()
    assert c.handshake_rate_per_source == 0
    assert HandshakeGate.from_config(c, RelayStats()) is None
    for bad in (
        {"handshake_rate_per_source": -1},
        {"handshake_rate_burst": 0},
        {"handshake_rate_sources": 0},
    ):
        with pytest.raises(ConfigError) as e:
            validate(bad, "c.toml")
        assert e.value.key == next(iter(bad))


def test_the_gate_counts_and_logs_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    stats = RelayStats()
    config = Config(handshake_rate_per_source=1.0, handshake_rate_burst=2)
    gate = HandshakeGate.from_config(config, stats)
    assert gate is not None
    caplog.set_level(logging.WARNING, "tlstrace.relay")
    results = [gate.admit("192.0.2.9", 50.0 + i / 1000, "tls:127.0.0.1:5061") for i in range(100)]
    assert results.count(True) == 2 and stats.rate_limited["tls:127.0.0.1:5061"] == 98
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        "refusing new connections from 192.0.2.9 on tls:127.0.0.1:5061: over "
        "handshake_rate_per_source (1/s, burst 2)"
    )
    # the next line, an interval later, says how many it did not report
    for i in range(5):
        gate.admit("192.0.2.9", 50.1 + i / 1000, "tls:127.0.0.1:5061")
    gate.admit("192.0.2.10", 50.01 + LOG_INTERVAL, "tls:127.0.0.1:5061")  # admitted
    gate.admit("192.0.2.10", 50.01 + LOG_INTERVAL, "tls:127.0.0.1:5061")  # admitted
    gate.admit("192.0.2.10", 50.01 + LOG_INTERVAL, "tls:127.0.0.1:5061")  # refused
    assert len(caplog.records) == 2
    assert caplog.records[1].getMessage().endswith("; 102 more refused since the last such line")
    assert stats.rate_limited["tls:127.0.0.1:5061"] == 104


def test_a_reload_keeps_the_table_when_the_settings_stay() -> None:
    stats = RelayStats()
    config = Config(handshake_rate_per_source=5.0)
    gate = HandshakeGate.from_config(config, stats)
    assert gate is not None
    assert (
        HandshakeGate.from_config(
            Config(handshake_rate_per_source=5.0, log_level="debug"), stats, gate
        )
        is gate
    )
    other = HandshakeGate.from_config(Config(handshake_rate_per_source=6.0), stats, gate)
    assert other is not None and other is not gate
    assert HandshakeGate.from_config(Config(), stats, gate) is None
