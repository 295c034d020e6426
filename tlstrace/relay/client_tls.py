"""TLS connections tlstrace opens as a client: to a peer (outbound) or to a tls: backend."""

from __future__ import annotations

import asyncio
import ssl
from typing import Self, cast

from tlstrace.config import Endpoint
from tlstrace.relay.connection import Connection
from tlstrace.relay.host import RelayHost
from tlstrace.relay.tls_leg import TlsLeg
from tlstrace.tls.certinfo import CertInfo


class ClientTls(TlsLeg):
    """A client-side TLS leg in a client domain, optionally opening with a preamble (a PROXY
    protocol header) before its ClientHello."""

    @classmethod
    def open(
        cls,
        relay: RelayHost,
        target: Endpoint,
        client_domain: str | None,
        listener: str,
        preamble: bytes = b"",
    ) -> Self:
        domain = relay.client_contexts.domain(client_domain)
        conn = Connection("outbound", (target.host, target.port), ("", 0), listener)
        leg = cls(
            relay,
            conn,
            relay.client_contexts.get(client_domain),
            server_side=False,
            server_hostname=domain.server_name or target.host,
        )
        leg.client_domain = client_domain
        leg.preamble = preamble
        return leg

    client_domain: str | None = None
    preamble = b""

    def local_cert(
        self, context: ssl.SSLContext, started: bool
    ) -> tuple[CertInfo | None, str | None]:
        return self.relay.client_contexts.cert_info(self.client_domain), None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        # None when the connection was reset at once; connection_lost follows
        self.conn.remote = (transport.get_extra_info("peername") or self.conn.remote)[:2]
        self.conn.local = (transport.get_extra_info("sockname") or ("", 0))[:2]
        self.relay.stats.outbound_opened[self.conn.listener] += 1
        if self.preamble:
            transport.write(self.preamble)
        super().connection_made(transport)
