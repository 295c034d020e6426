"""Per-connection TLS session keys as NSS key-log lines.

The standard library only writes one key-log file per context. OpenSSL's keylog callback
(SSL_CTX_set_keylog_callback) sees each line with its connection; the `sslkeylog` package
exposes it for stdlib contexts. We install it only on tlstrace's own contexts (not
process-wide) and only when keys are enabled, and attribute each line to the connection
whose handshake step is running: OpenSSL calls the callback synchronously from inside
`do_handshake()`, which the relay runs for one connection at a time.
"""

from __future__ import annotations

import ssl
from typing import Any

import _sslkeylog


class KeyLogTap:
    """Collects key-log lines into the list of the connection being handshaken."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: list[str] | None = None
        _sslkeylog._keylog_callback = self._on_line

    def _on_line(self, _sock: Any, line: str) -> None:
        if self.current is not None:
            self.current.append(line)

    @staticmethod
    def attach(ctx: ssl.SSLContext) -> None:
        """Make OpenSSL report the keys of connections made with `ctx`."""
        _sslkeylog.set_keylog_callback(ctx)
