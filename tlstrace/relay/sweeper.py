"""Periodic work: one pass over all legs for idle, partial-message and send timeouts (cheaper
than a timer per connection), and a reachability probe of idle backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from tlstrace.relay.runtime import Relay

log = logging.getLogger("tlstrace.relay")


def interval_for(relay: Relay) -> float:
    cfg = relay.config
    return max(
        0.05,
        min(
            1.0,
            cfg.tcp_max_msg_time / 4,
            cfg.tls_send_timeout / 4000,
            cfg.tcp_connection_lifetime / 4,
        ),
    )


async def sweep_forever(relay: Relay) -> None:
    while True:
        await asyncio.sleep(interval_for(relay))
        now = relay.ctx.clock()
        for leg in list(relay.legs):
            try:
                leg.check_timeouts(now)
            except Exception:  # one leg's bug must not stop every other timeout
                log.exception("timeout check of %r failed", leg)


async def probe_backend(relay: Relay, host: str, port: int, endpoint: str) -> bool:
    """Open and close a TCP connection to a backend; record the result for metrics."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError) as e:
        relay.upstream_result(endpoint, "backend", False, str(e) or type(e).__name__)
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    relay.upstream_result(endpoint, "backend", True)
    return True


async def probe_backends_forever(relay: Relay) -> None:
    """Keep `tlstrace_upstream_up` true to the backends while no client connects: probe each
    one that saw no connection attempt during the last interval."""
    while True:
        interval = relay.config.backend_probe_interval
        await asyncio.sleep(interval or 60.0)
        if not interval:
            continue
        for backend in relay.config.backends:
            status = relay.upstreams.get(str(backend))
            if status is None or time.time() - status.at >= interval:
                await probe_backend(relay, backend.host, backend.port, str(backend))
