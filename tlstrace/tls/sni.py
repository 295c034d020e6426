"""What OpenSSL's SNI callback saw, for the TLS session whose handshake step runs now.

OpenSSL calls the callback synchronously, inside `do_handshake`: a session (tls/session.py)
marks `SNI_SEEN` active around each step and reads what the callback left there after it. So
the C object the session runs on needs no Python wrapper (ssl.SSLObject, and the weak
reference OpenSSL's object keeps to it) to carry the name: about 0.17 KiB less per connection.
A callback run outside such a step (an ssl.SSLSocket or SSLObject someone else made from the
same contexts) notes the name on the object it is given, as before.
"""

from __future__ import annotations

from typing import Any


class SniSeen:
    __slots__ = ("active", "called", "mismatch", "name")

    def __init__(self) -> None:
        #: a session's handshake step is running
        self.active = False
        #: the callback ran during it
        self.called = False
        #: the name the client sent (None: no SNI)
        self.name: str | None = None
        #: OpenSSL read another name than tlstrace did (tls/contexts.py: refused)
        self.mismatch = False

    def note(self, obj: Any, server_name: str | None, mismatch: bool = False) -> None:
        """The callback's report (`obj`: what OpenSSL handed it)."""
        if self.active:
            self.called = True
            self.name = server_name
            self.mismatch = self.mismatch or mismatch
            return
        obj.tlstrace_sni = server_name
        if mismatch:
            obj.tlstrace_sni_mismatch = True


SNI_SEEN = SniSeen()
