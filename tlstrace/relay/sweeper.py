"""One periodic pass over all legs for idle, partial-message and send timeouts (cheaper than a
timer per connection)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay


def interval_for(relay: Relay) -> float:
    cfg = relay.config
    return max(0.05, min(1.0, cfg.tcp_max_msg_time / 4, cfg.tls_send_timeout / 4000,
                         cfg.tcp_connection_lifetime / 4))


async def sweep_forever(relay: Relay) -> None:
    while True:
        await asyncio.sleep(interval_for(relay))
        now = relay.loop.time()
        for leg in list(relay.legs):
            leg.check_timeouts(now)
