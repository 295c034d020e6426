"""HEP over TLS offers tlstrace's key-exchange groups (X25519, P-256, P-384), not OpenSSL's
default list: a collector, or whoever is in the path when hep_verify_cert is off, cannot pick
ffdhe8192 and make each reconnect cost hundreds of milliseconds of CPU. The senders are the
ones tlstrace builds (`preflight.sender_for`), against a real TLS collector whose context
accepts only the groups given."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

import pytest

from hep.codec import PacketTemplate
from hep.destination import parse_hep_id
from tests.support.hep_collectors import StreamCollector
from tests.support.pki import Pki
from tlstrace.config.load import validate
from tlstrace.preflight import sender_for
from tlstrace.tls.groups import set_groups

PACKET = PacketTemplate(
    src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=5061, dst_port=5060, ip_proto=6
).encode(1700000000, 0, b"OPTIONS sip:x SIP/2.0\r\n\r\n")


async def until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize(
    ("accepted", "verify", "works"),
    [
        (["ffdhe8192"], True, False),
        (["ffdhe8192"], False, False),
        (["X25519"], True, True),
    ],
)
def test_hep_over_tls_offers_only_tlstrace_groups(
    pki: Pki, accepted: list[str], verify: bool, works: bool
) -> None:
    leaf = pki.leaf("127.0.0.1", names=["127.0.0.1"], tag="hep-groups")

    async def scenario() -> None:
        col = StreamCollector(cert=leaf.cert, key=leaf.key)
        assert col._ssl is not None
        set_groups(col._ssl, accepted)  # the collector accepts only these
        await col.start()
        hep_id = f"[c]127.0.0.1:{col.port};transport=tls"
        config = validate(
            {"hep_id": [hep_id], "hep_ca_list": str(pki.ca_file), "hep_verify_cert": verify}, "test"
        )
        sender = sender_for(config, parse_hep_id(hep_id))
        await sender.start()
        sender.send(PACKET)
        try:
            if works:
                assert await until(lambda: len(col.packets) == 1), sender.stats
                assert sender.stats.connected
            else:
                assert await until(lambda: sender.stats.connect_errors >= 1), sender.stats
                s = sender.stats
                assert not s.connected and s.sent == 0 and not col.packets, s
                # the collector itself is fine: a client that offers what it accepts gets in
                ctx = ssl.create_default_context(cafile=str(pki.ca_file))
                set_groups(ctx, accepted)
                _, writer = await asyncio.open_connection("127.0.0.1", col.port, ssl=ctx)
                writer.write(PACKET)
                await writer.drain()
                assert await until(lambda: len(col.packets) == 1)
                writer.close()
        finally:
            await sender.aclose(timeout=0)
            await col.stop()

    asyncio.run(scenario())
