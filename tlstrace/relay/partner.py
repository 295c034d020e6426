"""The interface between the two legs of a relayed connection."""

from __future__ import annotations

from typing import Protocol

from tlstrace.relay.connection import CloseReason


class Partner(Protocol):
    """The other side of a leg: where its SIP messages go, and who hears about its end."""

    def send(self, chunks: list[bytes], nmsgs: int) -> None:
        """Write framed SIP messages (and relayed keep-alives), `nmsgs` of them messages."""

    def partner_closed(self, reason: CloseReason, detail: str) -> None:
        """The other leg ended: flush what is pending, then close."""

    def is_blocked(self) -> bool:
        """Sending more now would only pile up (its peer is not reading fast enough)."""

    def update_reading(self) -> None:
        """The other leg's blocked state changed: decide again whether to read."""

    def drained(self) -> bool:
        """Nothing its peer sent is still on its way through it (checked at shutdown)."""
