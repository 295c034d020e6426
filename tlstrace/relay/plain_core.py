"""The core of a plain TCP end (the backend SIP server, or the local SIP server), sans-IO:
frames what it sends, leniently (it is trusted), and keeps its timeouts."""

from __future__ import annotations

import sys

from tlstrace.relay.connection import CloseReason
from tlstrace.relay.context import RelayContext
from tlstrace.relay.core import Framer
from tlstrace.relay.leg_state import LegState
from tlstrace.sip.framing import WHITESPACE, SipFramer


class PlainCore(LegState):
    def __init__(self, ctx: RelayContext, name: str, framer: Framer | None = None) -> None:
        # (interned: one copy for every connection, not one each)
        super().__init__(ctx, name, sys.intern(f"{name}_message_timeout"))
        #: made at the first bytes (an idle connection holds none), with the max_msg_size in
        #: force when the connection opened
        self.framer: Framer | None = framer
        self.max_msg_size = ctx.config.max_msg_size
        #: messages in the last batch `receive` returned
        self.batch_msgs = 0

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Bytes from the SIP server: the framed chunks for the partner (`batch_msgs` of them
        messages); a framing error sets `close_request` after them."""
        out: list[bytes] = []
        framer = self.framer
        if framer is None:
            # the SIP server side is trusted with keep-alives: relay them as they are
            framer = self.framer = SipFramer(
                max_msg_size=self.max_msg_size,
                pingpong=False,
                crlf_drop=False,
                max_chunks=None,
                strict=False,
            )
        n = framer.feed_into(data, out)
        framer.relayed = 0
        if n < 0:
            self.batch_msgs = sum(1 for c in out if c[0] not in WHITESPACE)
            error = framer.error
            assert error is not None
            self.ctx.stats.framing_errors[f"{self.name}_{error.kind.value}"] += 1
            if self.close_request is None:
                self.close_request = (
                    CloseReason.FRAMING_ERROR,
                    f"from {self.name}: {error.detail}",
                    False,
                )
            return out
        self.batch_msgs = n
        self.note_partial(bool(framer.buffered), now)
        return out
