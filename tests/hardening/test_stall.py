"""Clients that try to make the relay grow or stall without sending SIP: TLS records that carry
no SIP (renegotiation requests, TLS 1.3 KeyUpdates, empty records, warning alerts), keep-alive
floods, and a client streaming whole records for longer than `tcp_max_msg_time`.

As in test_hostile_input.py, legitimate clients run measured traffic alongside each case and
must see zero errors; each offender is closed with its own reason, logged on its own line and
counted.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import (
    TLS1_2,
    LegitTraffic,
    Target,
    crafted_client_hello,
    rss_kib,
    wait_closed,
)
from tests.support.backend import SipBackend
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request
from tests.support.tls_inject import ALERT, APPLICATION_DATA, InjectingClient, record_types

Legit = Callable[..., LegitTraffic]

SETTINGS = {
    "tls_handshake_timeout": 500,
    "tcp_max_msg_time": 1.0,
    "tls_send_timeout": 1500,
    "conn_buffer_limit": 65536,
}
NON_SIP_LIMIT = 16  # the default tls_max_non_sip_records
KEEPALIVE_RATE = 2.0  # the default tls_keepalive_rate


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with SipBackend() as backend:
        relay = RelayProcess(
            tmp_path_factory.mktemp("stall"),
            {**SETTINGS, "listener": [RelayProcess.tls_listener(backend.port)]},
        )
        try:
            yield Target(relay, backend)
        finally:
            relay.stop()


def legit_figures(t: Target, traffic: LegitTraffic) -> dict[str, int]:
    result = traffic.check(t.backend)
    t.settle()
    return {
        "legit_sent": result.sent,
        "legit_lost": result.lost,
        "legit_errors": len(result.errors),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def renegotiation_hello() -> bytes:
    """A TLS 1.2 ClientHello handshake message (no record header)."""
    return crafted_client_hello(TLS1_2)[5:]


def port_of(c: InjectingClient) -> int:
    return int(c.sock.getsockname()[1])


# -- records that carry no SIP -------------------------------------------------------------------


def test_renegotiation_requests(target: Target, legit: Legit, record: Record) -> None:
    """ClientHellos inside an established TLS 1.2 session, and no SIP: the no_renegotiation
    alert OpenSSL owes each one goes out at once (it used to wait in memory for the next SIP
    message: 4 such clients grew the relay by 120-160 MiB), and a client that keeps sending
    them is closed with its own reason."""
    n, per_client = 4, 20_000
    before = target.scrape()
    rss_before = rss_kib(target.pid)
    traffic = legit(target.port())
    clients = [InjectingClient(target.port(), ssl.TLSVersion.TLSv1_2) for _ in range(n)]
    ports = [port_of(c) for c in clients]
    hello = renegotiation_hello()
    answered = 0
    cpu_before = cpu_seconds(target.pid)
    for c in clients:
        c.sock.sendall(c.renegotiation_request(hello))
        got = record_types(c.read_raw(2.0))
        # the alert arrives without any SIP having been exchanged
        answered += sum(1 for kind, _ in got if kind == ALERT)
    # then a flood: the relay must close them, not buffer an alert for each
    for c in clients:
        with contextlib.suppress(OSError):
            c.sock.sendall(b"".join(c.renegotiation_request(hello) for _ in range(per_client)))
    closed = sum(wait_closed(c.sock)[0] != "open" for c in clients)
    growth_kib = rss_kib(target.pid) - rss_before
    cpu = cpu_seconds(target.pid) - cpu_before
    for c in clients:
        c.close()
    figures = legit_figures(target, traffic)
    after = target.scrape()
    record(
        offenders=n,
        records_sent=n * (per_client + 1),
        alerts_answered_at_once=answered,
        closed=closed,
        relay_rss_growth_kib=growth_kib,
        relay_cpu_s=round(cpu, 3),
        **figures,
    )
    assert answered == n
    assert closed == n
    log = target.relay.log
    for port in ports:
        assert target.closed(port, "Too many TLS records without SIP (") in log
    assert after.delta(before, "tlstrace_connections_closed_total", reason="non_sip_records") == n
    assert growth_kib < 16 * 1024


def _empty(c: InjectingClient) -> bytes:
    return c.empty_record()


def _warning(c: InjectingClient) -> bytes:
    return c.warning_alert()


def _key_update(c: InjectingClient) -> bytes:
    return c.key_update()


def _renegotiation(c: InjectingClient) -> bytes:
    return c.renegotiation_request(renegotiation_hello())


NEIGHBOURS = {
    # kind: (TLS version, record maker, the reason the offender is closed with)
    "tls12_renegotiation_spaced": (
        ssl.TLSVersion.TLSv1_2,
        _renegotiation,
        "Too many TLS records without SIP (",
    ),
    "tls13_key_update": (ssl.TLSVersion.TLSv1_3, _key_update, "Too many TLS records without SIP ("),
    "tls12_empty_records": (ssl.TLSVersion.TLSv1_2, _empty, "Too many TLS records without SIP ("),
    "tls13_empty_records": (ssl.TLSVersion.TLSv1_3, _empty, "Too many TLS records without SIP ("),
    # OpenSSL itself ends a TLS 1.2 session at the 5th warning alert: the control
    "tls12_warning_alerts": (
        ssl.TLSVersion.TLSv1_2,
        _warning,
        "Read error (ssl routines: too many warn alerts)",
    ),
}


@pytest.mark.parametrize("kind", list(NEIGHBOURS))
def test_records_without_sip(target: Target, legit: Legit, record: Record, kind: str) -> None:
    """The neighbours: renegotiation requests two at a time, TLS 1.3 KeyUpdates
    (update_requested: OpenSSL sends its own KeyUpdate with its next write, RFC 8446 §4.6.3,
    so nothing piles up), empty application-data records, warning alerts. Sent two at a
    time (below OpenSSL's own per-read limit of 32 empty records), they used to keep a
    connection open for ever, each refreshing its idle timer; now the one that sends
    `tls_max_non_sip_records` in a row is closed."""
    version, make, reason = NEIGHBOURS[kind]
    n, groups = 2, 40
    before = target.scrape()
    traffic = legit(target.port(), newcomers=False)
    clients = [InjectingClient(target.port(), version) for _ in range(n)]
    ports = [port_of(c) for c in clients]
    for _ in range(groups):
        for c in clients:
            with contextlib.suppress(OSError):
                c.sock.sendall(make(c) + make(c))
        time.sleep(0.02)
    closed = sum(wait_closed(c.sock)[0] != "open" for c in clients)
    for c in clients:
        c.close()
    figures = legit_figures(target, traffic)
    after = target.scrape()
    record(offenders=n, records_sent=n * 2 * groups, closed=closed, reason=reason, **figures)
    assert closed == n
    log = target.relay.log
    for port in ports:
        assert target.closed(port, reason) in log
    label = "read_error" if reason.startswith("Read error") else "non_sip_records"
    assert after.delta(before, "tlstrace_connections_closed_total", reason=label) == n


def test_records_without_sip_are_not_traffic(
    tmp_path_factory: pytest.TempPathFactory, legit: Legit, record: Record
) -> None:
    """A client that sends only records without SIP, slowly (fewer than the count limit), is
    closed by `tcp_connection_lifetime` as idle while it goes on sending: such records do not
    count as traffic (each used to refresh the idle timer)."""
    lifetime = 2.0
    with SipBackend() as backend:
        relay = RelayProcess(
            tmp_path_factory.mktemp("idle"),
            {
                **SETTINGS,
                "tcp_connection_lifetime": lifetime,
                "listener": [RelayProcess.tls_listener(backend.port)],
            },
        )
        try:
            t = Target(relay, backend)
            before = t.scrape()
            traffic = legit(relay.port(), newcomers=False, pace=0.2)
            c = InjectingClient(relay.port(), ssl.TLSVersion.TLSv1_2)
            port = port_of(c)
            sent, deadline = 0, time.monotonic() + 4 * lifetime
            open_ = True
            while time.monotonic() < deadline:
                try:
                    c.sock.sendall(_renegotiation(c))
                except OSError:
                    open_ = False
                    break
                sent += 1
                if c.read_raw(0.3) == b"" and sent > 1 and wait_closed(c.sock, 0.01)[0] != "open":
                    open_ = False
                    break
            # (still open when the client stops: it was kept alive by what it sent)
            c.close()
            result = traffic.check(backend)
            t.settle()
            after = t.scrape()
            record(
                records_sent=sent,
                closed=int(not open_),
                legit_sent=result.sent,
                legit_lost=result.lost,
                legit_errors=len(result.errors),
            )
            assert not open_
            assert t.closed(port, "Timeout on no traffic") in relay.log
            assert (
                after.delta(before, "tlstrace_connections_closed_total", reason="idle_timeout") == 1
            )
        finally:
            relay.stop()


# -- keep-alives ---------------------------------------------------------------------------------


def test_pongs_for_pings_read_together_leave_in_one_record(
    target: Target, legit: Legit, record: Record
) -> None:
    """Eight CRLFCRLF pings in one TLS record get their eight pongs in one record (each pong
    used to be a record of its own: 29 bytes on the wire for each 4 received)."""
    pings = 8
    before = target.scrape()
    traffic = legit(target.port(), newcomers=False)
    c = InjectingClient(target.port(), ssl.TLSVersion.TLSv1_2)
    c.sock.sendall(c.sip(b"\r\n\r\n" * pings))
    got = record_types(c.read_raw(2.0))
    c.sock.sendall(c.record(ALERT, b"\x01\x00"))  # close_notify
    c.close()
    figures = legit_figures(target, traffic)
    after = target.scrape()
    record(pings=pings, records_back=len(got), bytes_back=sum(5 + n for _, n in got), **figures)
    # one application-data record: 8 explicit nonce bytes, 2 bytes per pong, 16 tag bytes
    assert got == [(APPLICATION_DATA, 8 + 2 * pings + 16)]
    assert after.delta(before, "tlstrace_keepalives_total", kind="ping") == pings


def test_keepalive_flood(target: Target, legit: Legit, record: Record) -> None:
    """Clients sending nothing but whole records full of CRLFCRLF pings are closed for
    exceeding `tls_keepalive_rate` (they used to be answered ping by ping, then closed as
    "Timeout waiting for a complete message", which they never sent)."""
    n = 3
    before = target.scrape()
    traffic = legit(target.port())
    clients = [InjectingClient(target.port(), ssl.TLSVersion.TLSv1_3) for _ in range(n)]
    ports = [port_of(c) for c in clients]
    record_of_pings = b"\r\n\r\n" * 4096  # 16 KiB: one full TLS record

    def flood(c: InjectingClient) -> None:
        deadline = time.monotonic() + 5
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                c.sock.sendall(b"".join(c.sip(record_of_pings) for _ in range(4)))

    threads = [threading.Thread(target=flood, args=(c,), daemon=True) for c in clients]
    cpu_before = cpu_seconds(target.pid)
    for th in threads:
        th.start()
    for th in threads:
        th.join(15)
    closed = sum(wait_closed(c.sock)[0] != "open" for c in clients)
    cpu = cpu_seconds(target.pid) - cpu_before
    for c in clients:
        c.close()
    figures = legit_figures(target, traffic)
    after = target.scrape()
    record(
        offenders=n,
        closed=closed,
        pings_answered=after.delta(before, "tlstrace_keepalives_total", kind="ping"),
        relay_cpu_s=round(cpu, 3),
        **figures,
    )
    assert closed == n
    log = target.relay.log
    for port in ports:
        assert target.closed(port, "Keep-alive rate exceeded (") in log
    assert after.delta(before, "tlstrace_connections_closed_total", reason="keepalive_flood") == n
    assert after.delta(before, "tlstrace_connections_closed_total", reason="message_timeout") == 0


def test_keepalives_within_the_rate(target: Target) -> None:
    """The control: a ping every 0.6 s (under the default 2 a second) is answered each time."""
    with TlsClient(target.port()) as c:
        for _ in range(6):
            c.send(b"\r\n\r\n")
            assert c.recv_keepalive() == b"\r\n"
            time.sleep(0.6)
        c.send(request(call_id="after-pings@x"))
        assert c.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
        c.close_notify()


def test_streaming_whole_records_is_not_a_slowloris(
    target: Target, legit: Legit, record: Record
) -> None:
    """A client that pipelines requests without a pause for several times
    `tcp_max_msg_time` always has a record or message in flight at the end of a read; that
    is not one message waiting for its rest, and must not be closed as one. (The client
    encrypts its own records, so that a second thread can drain the answers from the raw
    socket meanwhile; the relay's counters say what was relayed.)"""
    before = target.scrape()
    traffic = legit(target.port(), newcomers=False)
    c = InjectingClient(target.port(), ssl.TLSVersion.TLSv1_2)
    port = port_of(c)
    stop = threading.Event()
    drained = 0

    def drain() -> None:
        nonlocal drained
        c.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                data = c.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            drained += len(data)

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    sent = 0
    body = b"s" * 3000
    deadline = time.monotonic() + 4 * SETTINGS["tcp_max_msg_time"]
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            c.sock.sendall(
                b"".join(
                    c.sip(request("MESSAGE", f"stream-{sent + i}@x", 1, body)) for i in range(20)
                )
            )
            sent += 20
    # every request relayed and answered, then the client leaves
    after = target.scrape()
    wait_until = time.monotonic() + 30
    while (
        after.delta(before, "tlstrace_sip_messages_total", direction="to_client", kind="2xx")
        < sent + traffic.answered
        and time.monotonic() < wait_until
    ):
        time.sleep(0.2)
        after = target.scrape()
    answered = (
        int(after.delta(before, "tlstrace_sip_messages_total", direction="to_client", kind="2xx"))
        - traffic.answered
    )
    c.sock.sendall(c.record(ALERT, b"\x01\x00"))  # close_notify
    stop.set()
    th.join(5)
    c.close()
    figures = legit_figures(target, traffic)
    after = target.scrape()
    record(requests=sent, answered=answered, bytes_back=drained, **figures)
    assert answered >= sent
    assert target.closed(port, "Timeout waiting for a complete message") not in target.relay.log
    assert after.delta(before, "tlstrace_connections_closed_total", reason="message_timeout") == 0
