"""HEP senders against real loopback collectors: live, down, slow, deaf, TLS; under asyncio
and uvloop. Counters are asserted; times never are."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

import hep.sender
from hep.codec import PacketTemplate, decode
from hep.destination import HepDestination
from hep.listen import Collector, serve
from hep.sender import Backoff, HepIdentity, HepSender, HepSenderGroup, SenderStats
from tests.support.hep_collectors import (
    FlappingCollector,
    StreamCollector,
    deaf_tcp_listener,
)
from tests.support.net import free_port
from tests.support.pki import Pki

SIP = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1\r\n"
    b"Call-ID: sender-test@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
TEMPLATE = PacketTemplate(
    src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=5061, dst_port=5060, ip_proto=6, capture_id=7
)
FAST: dict[str, Any] = {"backoff_initial": 0.02, "backoff_max": 0.1, "connect_timeout": 2.0}


def packet(i: int, size: int = 0) -> bytes:
    payload = SIP + b"x" * size
    return TEMPLATE.encode(1700000000, i, payload, str(i).encode())


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Awaitable[None]], None]]:
    """Runs a scenario on a fresh loop of each kind, bounded by 30 s."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:

        def go(coro: Awaitable[None]) -> None:
            async def bounded() -> None:
                async with asyncio.timeout(30):
                    await coro

            runner.run(bounded())

        yield go


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def accounted(s: SenderStats, total: int) -> bool:
    return s.sent + s.dropped + s.queue_depth == total


# ------------------------------------------------------------------- UDP
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_udp_live_collector_gets_everything(
    run: Callable[[Awaitable[None]], None], host: str
) -> None:
    async def scenario() -> None:
        col = Collector()
        h = f"[{host}]" if ":" in host else host
        server = await serve(f"udp:{h}:0", col.on_packet)
        sender = HepSender(HepDestination("live", host, server.address.port, "udp"), **FAST)
        await sender.start()
        assert await sender.wait_connected(5)
        for i in range(50):
            assert sender.send(packet(i)) is True
        got = await col.wait(50)
        assert [p.ts_usec for p in got] == list(range(50))
        assert got[0].payload == SIP and got[0].correlation_id == b"0"
        s = sender.stats
        assert (s.sent, s.dropped, s.send_errors, s.queue_depth) == (50, 0, 0, 0)
        assert s.connected and s.state == "connected"
        await sender.aclose()
        server.close()
        await server.wait_closed()
        assert sender.send(packet(0)) is False  # closed: dropped, counted
        assert sender.stats.dropped == 1 and sender.stats.state == "closed"

    run(scenario())


def test_udp_collector_down_then_back(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
        sender = HepSender(
            HepDestination("down", "127.0.0.1", port, "udp"), backoff_initial=0.05, backoff_max=0.2
        )
        await sender.start()
        assert await sender.wait_connected(5)
        # send sends at once. The first datagram leaves; its ICMP "port unreachable" comes
        # back as ECONNREFUSED on a later send, which drops that datagram, and from then on
        # `send` drops at once, without a syscall.
        accepted = [sender.send(packet(i)) for i in range(200)]
        assert accepted[0] and not accepted[-1]
        await until(lambda: sender.stats.state == "refused", "the refusal is seen")
        assert not any(sender.send(packet(i)) for i in range(100))
        s = sender.stats
        assert s.send_errors == 1 and not s.connected
        assert s.sent == 1 and s.dropped == 299 and accounted(s, 300)
        assert "ConnectionRefused" in (s.last_error or "")

        col = Collector()
        server = await serve(f"udp:127.0.0.1:{port}", col.on_packet)
        i = 1000

        def delivered() -> bool:
            nonlocal i
            sender.send(packet(i % 1_000_000))
            i += 1
            return len(col.packets) >= 3

        await until(delivered, "the sender sends again once the collector is back")
        assert sender.stats.reconnects >= 1
        server.close()
        await sender.aclose()

    run(scenario())


def test_udp_oversized_datagram_is_a_counted_send_error(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        col = Collector()
        server = await serve("udp:127.0.0.1:0", col.on_packet)
        sender = HepSender(HepDestination("big", "127.0.0.1", server.address.port, "udp"))
        await sender.start()
        assert await sender.wait_connected(5)
        big = TEMPLATE.encode(1, 1, b"x" * TEMPLATE.max_payload())  # 65535 > 65507 for UDP/IPv4
        assert sender.send(big) is False  # the kernel refuses it: dropped, counted
        assert sender.send(packet(1)) is True
        await col.wait(1)
        s = sender.stats
        assert (s.sent, s.dropped, s.send_errors) == (1, 1, 1)
        assert "Message too long" in (s.last_error or "")
        server.close()
        await sender.aclose()

    run(scenario())


def test_udp_eagain_queues_in_order_then_sends_straight_again(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """A datagram the kernel refuses with EAGAIN waits in the queue, the ones after it queue
    behind it, and all go out in order once the socket is writable; then `send` sends
    straight again. (A full socket is stood in for by one end of a Unix datagram pair whose
    other end reads only later: loopback UDP never says EAGAIN.)"""

    async def scenario() -> None:
        col = Collector()
        server = await serve("udp:127.0.0.1:0", col.on_packet)
        sender = HepSender(HepDestination("full", "127.0.0.1", server.address.port, "udp"), **FAST)
        await sender.start()
        assert await sender.wait_connected(5)
        full, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        full.setblocking(False)
        reader.setblocking(False)
        assert sender._sock is not None
        sender._sock.close()
        sender._sock = sender._direct = full
        sent = 0
        while sender.stats.queue_depth == 0 and sent < 100_000:
            assert sender.send(packet(sent % 1_000_000))
            sent += 1
        assert sender.stats.queue_depth == 1 and sender._direct is None
        for _ in range(10):
            assert sender.send(packet(sent))
            sent += 1
        assert sender.stats.queue_depth == 11
        got: list[bytes] = []

        def drain() -> None:
            try:
                while True:
                    got.append(reader.recv(65536))
            except BlockingIOError:
                pass

        loop = asyncio.get_running_loop()
        loop.add_reader(reader, drain)
        await until(lambda: len(got) == sent, f"all {sent} datagrams arrive ({sender.stats})")
        assert [decode(d).ts_usec for d in got] == list(range(sent))
        s = sender.stats
        assert (s.sent, s.dropped, s.queue_depth) == (sent, 0, 0)
        assert sender._direct is full
        assert sender.send(packet(0))
        loop.remove_reader(reader)
        reader.close()
        server.close()
        await sender.aclose()

    run(scenario())


# ------------------------------------------------------------------- TCP
def test_tcp_packets_of_one_iteration_go_out_in_one_write(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        col = await StreamCollector().start()
        sender = HepSender(HepDestination("batch", "127.0.0.1", col.port, "tcp"), **FAST)
        await sender.start()
        assert await sender.wait_connected(5)
        await asyncio.sleep(0.05)  # the writer waits for packets
        real = sender._transport
        assert real is not None
        writes: list[int] = []

        class Counting:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def write(self, data: bytes) -> None:
                writes.append(len(data))
                real.write(data)

        sender._transport = Counting()  # type: ignore[assignment]
        packets = [packet(i) for i in range(50)]
        for p in packets:
            assert sender.send(p)
        await until(lambda: len(col.packets) == 50, "50 packets arrive")
        assert writes == [sum(map(len, packets))]
        assert [p.ts_usec for p in col.packets] == list(range(50))
        sender._transport = real
        await sender.aclose()
        await col.stop()

    run(scenario())


def test_tcp_collector_down_queues_then_drops_then_delivers(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        port = free_port()
        sender = HepSender(HepDestination("tcp", "127.0.0.1", port, "tcp"), queue_size=20, **FAST)
        await sender.start()
        accepted = [sender.send(packet(i)) for i in range(50)]
        assert accepted == [True] * 20 + [False] * 30  # the queue holds 20; the rest is dropped
        await until(lambda: sender.stats.connect_errors >= 3, "connection attempts fail")
        s = sender.stats
        assert (s.sent, s.dropped, s.queue_depth, s.connected) == (0, 30, 20, False)
        assert s.reconnects >= 2 and "refused" in (s.last_error or "").lower()

        col = await StreamCollector("127.0.0.1", port).start()
        await until(lambda: len(col.packets) == 20, "the queued packets arrive")
        assert [p.ts_usec for p in col.packets] == list(range(20))
        s = sender.stats
        assert (s.sent, s.dropped, s.queue_depth) == (20, 30, 0) and s.connected
        await sender.aclose()
        await col.stop()

    run(scenario())


def test_tcp_reconnects_after_the_collector_restarts(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        col = await StreamCollector().start()
        port = col.port
        sender = HepSender(HepDestination("tcp", "127.0.0.1", port, "tcp"), **FAST)
        await sender.start()
        assert await sender.wait_connected(5)
        for i in range(10):
            sender.send(packet(i))
        await until(lambda: len(col.packets) == 10, "first batch")
        await col.stop()
        await until(lambda: not sender.connected, "the sender sees the connection go")
        for i in range(10, 15):
            assert sender.send(packet(i))  # queued while disconnected
        col2 = await StreamCollector("127.0.0.1", port).start()
        await until(lambda: len(col2.packets) == 5, "queued packets after the restart")
        assert [p.ts_usec for p in col2.packets] == list(range(10, 15))
        s = sender.stats
        assert s.sent == 15 and s.dropped == 0 and s.reconnects >= 1 and s.send_errors >= 1
        await sender.aclose()
        await col2.stop()

    run(scenario())


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_tcp_collector_that_flaps_then_recovers(
    run: Callable[[Awaitable[None]], None], rst: bool
) -> None:
    """A collector that closes every connection as soon as it accepts it (under uvloop,
    `create_connection` can then return an already-closed transport) must never end the
    sender: once the collector behaves, every packet sent arrives."""
    col = FlappingCollector(rst=rst)

    async def scenario() -> None:
        sender = HepSender(
            HepDestination("flappy", "127.0.0.1", col.port, "tcp"),
            backoff_initial=0.001,
            backoff_max=0.005,
            connect_timeout=2.0,
        )
        await sender.start()
        total = 0
        while col.flapped < 200:  # a few hundred accept-and-close, packets sent throughout
            sender.send(packet(total))
            total += 1
            await asyncio.sleep(0.002)
            if total > 20000:
                raise AssertionError(f"only {col.flapped} connections in {total} rounds")
        col.flap = False  # recovered
        await until(
            lambda: col.connections >= 1 and sender.connected,
            f"the sender connected to the recovered collector ({sender.stats})",
        )
        first = total
        for _ in range(300):
            assert sender.send(packet(total)) is True
            total += 1
        await until(
            lambda: sum(p.ts_usec >= first for p in col.packets) >= 300,
            f"300 packets after recovery arrived ({sender.stats})",
        )
        after = sorted(p.ts_usec for p in col.packets if p.ts_usec >= first)
        assert after == list(range(first, total))
        s = sender.stats
        assert accounted(s, total) and s.queue_depth == 0 and s.state == "connected"
        assert s.reconnects >= 100  # it kept trying through the flapping
        await sender.aclose()

    try:
        run(scenario())
    finally:
        col.close()


def test_a_sender_whose_task_fails_is_logged_and_restarted(
    run: Callable[[Awaitable[None]], None], caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever ends a sender's task (here an exception injected into its writer, standing
    for a bug nobody foresaw) is logged and the sender starts again."""

    async def scenario() -> None:
        col = await StreamCollector().start()
        sender = HepSender(HepDestination("buggy", "127.0.0.1", col.port, "tcp"), **FAST)
        pump = sender._pump
        failures = 0

        async def failing_once(*args: Any) -> None:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise RuntimeError("injected failure")
            await pump(*args)

        sender._pump = failing_once  # type: ignore[method-assign]
        await sender.start()
        for i in range(50):
            sender.send(packet(i))
        await until(lambda: len(col.packets) >= 50, f"50 packets arrived ({sender.stats})")
        assert sorted(p.ts_usec for p in col.packets) == list(range(50))
        s = sender.stats
        assert s.restarts == 1 and s.state == "connected"
        assert "injected failure" in (s.last_error or "")
        await sender.aclose()
        await col.stop()

    with caplog.at_level("ERROR", logger="hep.sender"):
        run(scenario())
    (rec,) = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert "HEP buggy sender: its task failed: RuntimeError: injected failure" in rec.getMessage()
    assert rec.exc_info is not None


def test_tcp_collector_that_never_reads_ends_in_drops_not_memory(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        with deaf_tcp_listener() as port:
            sender = HepSender(
                HepDestination("deaf", "127.0.0.1", port, "tcp"),
                queue_size=100,
                write_buffer_limit=64 * 1024,
                stall_timeout=3600,
                **FAST,
            )
            await sender.start()
            assert await sender.wait_connected(5)
            total = 0
            while sender.stats.dropped < 1000:
                for _ in range(200):
                    sender.send(packet(total % 1_000_000, size=1000))
                    total += 1
                await asyncio.sleep(0.002)
                assert total < 200_000, "the kernel buffers should be full long before"
            s = sender.stats
            assert s.connected and s.queue_depth <= 100
            assert s.buffered_bytes <= 64 * 1024 + 65536 + 2048  # limit + one batch
            assert accounted(s, total)
            assert s.send_errors == 0
            await sender.aclose(timeout=0.2)
            s = sender.stats
            assert s.queue_depth == 0 and s.sent + s.dropped == total

    run(scenario())


def test_tcp_stalled_connection_is_aborted_and_reopened(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        with deaf_tcp_listener() as port:
            sender = HepSender(
                HepDestination("deaf", "127.0.0.1", port, "tcp"),
                queue_size=50,
                write_buffer_limit=16 * 1024,
                stall_timeout=0.3,
                **FAST,
            )
            await sender.start()
            assert await sender.wait_connected(5)

            def flood() -> bool:
                for _ in range(100):
                    sender.send(packet(1, size=1000))
                return sender.stats.reconnects >= 1

            await until(flood, "a stalled connection is replaced")
            s = sender.stats
            assert s.send_errors >= 1 and "stalled" not in (s.state or "")
            assert "read nothing" in (s.last_error or "")
            await sender.aclose(timeout=0.1)

    run(scenario())


def test_slow_tcp_collector_gets_every_packet_sent_and_whole(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        col = await StreamCollector(read_delay=0.002, read_size=4096).start()
        sender = HepSender(
            HepDestination("slow", "127.0.0.1", col.port, "tcp"),
            queue_size=50,
            write_buffer_limit=16 * 1024,
            **FAST,
        )
        await sender.start()
        assert await sender.wait_connected(5)
        total = 0
        for _ in range(40):
            for _ in range(100):
                sender.send(packet(total, size=500))
                total += 1
            await asyncio.sleep(0.001)
        await until(
            lambda: sender.stats.queue_depth == 0 and sender.stats.buffered_bytes == 0,
            "the queue drains",
        )
        s = sender.stats
        assert s.dropped > 0 and accounted(s, total)
        await until(lambda: len(col.packets) == s.sent, "everything sent is received")
        assert not col.errors  # no torn frames
        usecs = [p.ts_usec for p in col.packets]
        assert usecs == sorted(usecs)  # in order, gaps only where packets were dropped
        await sender.aclose()
        await col.stop()

    run(scenario())


# ------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("hep-pki"))


@pytest.mark.parametrize(
    ("untrusted", "verify", "delivered"),
    [
        (False, True, True),
        (True, True, False),
        (True, False, True),
    ],
)
def test_tls_verification(
    run: Callable[[Awaitable[None]], None], pki: Pki, untrusted: bool, verify: bool, delivered: bool
) -> None:
    leaf = pki.leaf(
        "127.0.0.1", names=["127.0.0.1", "::1"], untrusted=untrusted, tag=f"collector-{untrusted}"
    )

    async def scenario() -> None:
        col = await StreamCollector(cert=leaf.cert, key=leaf.key).start()
        sender = HepSender(
            HepDestination("tls", "127.0.0.1", col.port, "tls"),
            ca_file=pki.ca_file,
            verify=verify,
            **FAST,
        )
        await sender.start()
        for i in range(5):
            assert sender.send(packet(i))
        if delivered:
            await until(lambda: len(col.packets) == 5, "packets over TLS")
            assert sender.stats.connected and sender.stats.sent == 5
            assert col.packets[0] == decode(packet(0))
        else:
            await until(lambda: sender.stats.connect_errors >= 2, "verification fails")
            s = sender.stats
            assert not s.connected and s.sent == 0 and s.queue_depth == 5
            assert "certificate verification failed" in (s.last_error or "")
            assert not col.packets
        await sender.aclose(timeout=0 if not delivered else 1)
        await col.stop()

    run(scenario())


def test_tls_over_ipv6(run: Callable[[Awaitable[None]], None], pki: Pki) -> None:
    leaf = pki.leaf("::1", names=["::1"], tag="collector-v6")

    async def scenario() -> None:
        col = await StreamCollector("::1", cert=leaf.cert, key=leaf.key).start()
        sender = HepSender(f"[v6][::1]:{col.port};transport=tls", ca_file=pki.ca_file, **FAST)
        await sender.start()
        sender.send(packet(1))
        await until(lambda: len(col.packets) == 1, "a packet over TLS on ::1")
        await sender.aclose()
        await col.stop()

    run(scenario())


# ------------------------------------------------------------- never raise
def test_send_never_raises(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        sender = HepSender(HepDestination("x", "127.0.0.1", free_port(), "tcp"), **FAST)
        assert sender.send(None) is False  # type: ignore[arg-type]
        assert sender.send(object()) is False  # type: ignore[arg-type]
        assert sender.stats.dropped == 2
        assert sender.send(packet(1)) is True  # before start(): queued
        await sender.start()
        await sender.aclose(timeout=0)
        assert sender.stats.dropped == 3 and sender.stats.state == "closed"

    run(scenario())


def test_unresolvable_udp_host_counts_and_drops(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        sender = HepSender(
            HepDestination("nx", "no-such-host.invalid", 9060, "udp"), queue_size=3, **FAST
        )
        await sender.start()
        results = [sender.send(packet(i)) for i in range(5)]
        assert results == [True, True, True, False, False]
        await until(lambda: sender.stats.connect_errors >= 1, "resolution fails")
        assert not sender.stats.connected
        await sender.aclose(timeout=0)
        assert sender.stats.dropped == 5

    run(scenario())


# ----------------------------------------------------------------- groups
def test_group_sends_by_name_and_identity(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        col = Collector()
        server = await serve("udp:127.0.0.1:0", col.on_packet)
        ident = HepIdentity(capture_id=9, auth_key=b"k")
        group = HepSenderGroup(
            [
                HepSender(f"[homer]127.0.0.1:{server.address.port}", identity=ident),
                HepSender(f"[down]127.0.0.1:{free_port()};transport=tcp", queue_size=1, **FAST),
            ]
        )
        with pytest.raises(ValueError, match="already exists"):
            group.add(HepSender("[homer]127.0.0.1"))
        assert group.names == ["homer", "down"] and len(group) == 2 and "down" in group
        assert group.identities == [ident, HepIdentity()]
        await group.start()
        assert await group["homer"].wait_connected(5)
        assert group.send_all(packet(1)) == 2  # udp sent, tcp queued
        assert group.send_all(packet(2)) == 1  # tcp queue (1) full
        assert group.send_identity(ident, packet(3)) == 1
        assert group.send_to("homer", packet(4)) is True
        assert group.send_to("nobody", packet(5)) is False
        await col.wait(4)
        stats = group.stats()
        assert stats["homer"].sent == 4 and stats["down"].dropped == 1
        await group.aclose(timeout=0.1)
        server.close()
        assert group.stats()["down"].dropped == 2  # the queued one, at close

    run(scenario())


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(0.5, 4.0, jitter=0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5
    jittered = Backoff(1.0, 1.0)
    assert all(0.8 <= jittered.next() <= 1.2 for _ in range(100))


def test_identity_builds_templates() -> None:
    ident = HepIdentity(capture_id=42, auth_key=b"k", node_name=b"n")
    t = ident.template(src_ip="::1", dst_ip="::2", src_port=1, dst_port=2, ip_proto=6)
    p = decode(t.encode(1, 2, b"x"))
    assert (p.capture_id, p.auth_key, p.node_name, p.family) == (42, b"k", b"n", 10)


@pytest.mark.parametrize("c_loop", [True, False])
def test_udp_send_packets_is_send_for_each(
    run: Callable[[Awaitable[None]], None], c_loop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`send_packets` (one call into C for a batch while datagrams go straight out, or `send`
    per packet when the C loop is not built) sends what `send` per packet sends, in order,
    one datagram each, and counts alike."""
    if not c_loop:
        monkeypatch.setattr(hep.sender, "_send_all", None)
    elif hep.sender._send_all is None:
        pytest.skip("the C loop (hep/_udpsend.c) is not built")

    async def scenario() -> None:
        col = Collector()
        server = await serve("udp:127.0.0.1:0", col.on_packet)
        sender = HepSender(HepDestination("live", "127.0.0.1", server.address.port, "udp"), **FAST)
        await sender.start()
        assert await sender.wait_connected(5)
        batches = [
            [packet(i * 10 + j, size=j * 100) for j in range(n)] for i, n in enumerate((3, 1, 0, 7))
        ]
        for batch in batches:
            sender.send_packets(batch)
        want = [p for batch in batches for p in batch]
        got = await col.wait(len(want))
        assert [p.ts_usec for p in got] == [decode(p).ts_usec for p in want]
        s = sender.stats
        assert (s.sent, s.bytes_sent, s.dropped, s.send_errors) == (
            len(want),
            sum(map(len, want)),
            0,
            0,
        )
        await sender.aclose()
        server.close()
        await server.wait_closed()
        sender.send_packets([packet(0), packet(1)])  # closed: dropped, counted
        assert sender.stats.dropped == 2

    run(scenario())


def test_udp_send_packets_to_a_closed_port_counts_as_send_does(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """A refusal in the middle of a batch: the datagrams before it counted sent, it and the
    ones after it dropped, the sender backs off: as with `send` per packet."""

    async def scenario() -> None:
        stats = []
        for batched in (False, True):
            port = free_port(socket.AF_INET, socket.SOCK_DGRAM)
            sender = HepSender(HepDestination("down", "127.0.0.1", port, "udp"), **FAST)
            await sender.start()
            assert await sender.wait_connected(5)
            packets = [packet(i) for i in range(50)]
            if batched:
                sender.send_packets(packets)
            else:
                for p in packets:
                    sender.send(p)
            s = sender.stats
            assert s.sent >= 1 and s.sent + s.dropped == 50 and s.send_errors == 1
            stats.append((s.sent, s.dropped, s.send_errors, s.state, s.last_error))
            await sender.aclose()
        assert stats[0] == stats[1]

    run(scenario())
