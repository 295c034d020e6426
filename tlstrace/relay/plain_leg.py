"""A plain TCP leg: the backend SIP server (inbound) or the local SIP server (outbound). An
adapter around relay/plain_core.PlainCore."""

from __future__ import annotations

import asyncio
import time

from tlstrace.relay.connection import CloseReason
from tlstrace.relay.host import RelayHost
from tlstrace.relay.leg import BaseLeg
from tlstrace.relay.partner import Partner
from tlstrace.relay.plain_core import PlainCore


class PlainLeg(BaseLeg):
    """Frames SIP from a TCP peer and hands it to the partner; writes the partner's SIP."""

    core: PlainCore

    def __init__(
        self, relay: RelayHost, partner: Partner | None, *, name: str, preamble: bytes = b""
    ) -> None:
        core = PlainCore(relay.ctx, name)
        super().__init__(relay, core)
        self.core = core
        self.partner = partner
        self.preamble = preamble

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self.attach(transport)
        if self.preamble:
            transport.write(self.preamble)
        self.relay.register(self)

    def data_received(self, data: bytes) -> None:
        # relay_seconds times one read in four: the others do not read the clock
        hist = self.ctx.stats.relay_seconds
        hist.tick += 1
        started = 0.0 if hist.tick & 3 else time.perf_counter()
        core = self.core
        out = core.receive(data, self.ctx.clock())
        if out and self.partner is not None:
            self.partner.send(out, core.batch_msgs)
            if started and core.close_request is None:
                self.ctx.stats.relay_seconds.observe(time.perf_counter() - started)
        if core.close_request is not None:
            self.close(*core.close_request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live = False
        self.relay.unregister(self)
        if not self.closed:
            self.close(
                CloseReason.BACKEND_GONE,
                f"{self.name} closed the connection" + (f": {exc}" if exc else ""),
            )

    # -- Partner interface ---------------------------------------------------------------------

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        if not self.closed:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        self.partner = None
        self.close(reason, detail)

    # -- closing -------------------------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str = "", abort: bool = False) -> None:
        """Close after flushing what is written (or abort); tell the partner."""
        if self.closed:
            return
        self.closed = True
        self.shut_transport(reason, abort)
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner_closed(reason, detail)
