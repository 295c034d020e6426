"""The keep-alive budget of a client connection (tls_keepalive_rate), in memory."""

from __future__ import annotations

from tlstrace.relay.tls_leg import keepalive_burst


def test_a_slow_rate_still_allows_a_ping() -> None:
    assert keepalive_burst(2.0) == 20.0
    assert keepalive_burst(0.05) == 2.0  # one ping every 20 s: its CRLFCRLF, and a CRLF
