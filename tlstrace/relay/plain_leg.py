"""A plain TCP leg: the backend SIP server (inbound) or the local SIP server (outbound)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tlstrace.relay.connection import CloseReason
from tlstrace.relay.leg import BaseLeg
from tlstrace.relay.partner import Partner
from tlstrace.sip.framing import FramingError, KeepAlive, Message, SipFramer

if TYPE_CHECKING:
    from tlstrace.relay.runtime import Relay

log = logging.getLogger("tlstrace.relay")


class PlainLeg(BaseLeg):
    """Frames SIP from a TCP peer and hands it to the partner; writes the partner's SIP."""

    def __init__(
        self, relay: Relay, partner: Partner | None, *, name: str, preamble: bytes = b""
    ) -> None:
        super().__init__(relay)
        self.partner = partner
        self.name = name  # "backend" or "local", for logs
        self.timeout_kind = f"{name}_message_timeout"
        self.preamble = preamble
        # the SIP server side is trusted with keep-alives: relay them as they are
        self.framer = SipFramer(
            max_msg_size=relay.config.max_msg_size,
            pingpong=False,
            crlf_drop=False,
            max_chunks=None,
            strict=False,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self.attach(transport)
        if self.preamble:
            transport.write(self.preamble)
        self.relay.register(self)

    def data_received(self, data: bytes) -> None:
        started = time.perf_counter()
        out: list[bytes] = []
        nmsgs = 0
        for ev in self.framer.feed(data):
            cls = ev.__class__
            if cls is Message:
                out.append(ev.data)  # type: ignore[union-attr]
                nmsgs += 1
            elif cls is KeepAlive:
                out.append(ev.data)  # type: ignore[union-attr]
            elif cls is FramingError:
                assert isinstance(ev, FramingError)
                if out and self.partner is not None:
                    self.partner.send(out, nmsgs)
                self.relay.stats.framing_errors[f"{self.name}_{ev.kind.value}"] += 1
                self.close(CloseReason.FRAMING_ERROR, f"from {self.name}: {ev.detail}")
                return
        self.note_partial(bool(self.framer.buffered))
        if out and self.partner is not None:
            self.partner.send(out, nmsgs)
            self.relay.stats.relay_seconds.sample(started)

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
