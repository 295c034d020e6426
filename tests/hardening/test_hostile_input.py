"""Hostile input on the TLS port of a running relay, each case while legitimate clients run
measured traffic alongside.

For every case: each offender is closed; the reason is in the log (the exact text, on the
offender's own line) and counted in /metrics; the legitimate clients see zero errors, every
request they sent reached the backend exactly once and was answered, and the relay counted
every message. One relay serves the whole module (the figures are deltas), so a case that
disturbed it would show up in the cases after it too.
"""

from __future__ import annotations

import contextlib
import random
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import (
    SSL3,
    TLS1_0,
    TLS1_1,
    TLS1_2,
    LegitTraffic,
    Metrics,
    RawTlsClient,
    Target,
    connect,
    crafted_client_hello,
    local_port,
    many_sockets,
    real_client_hello,
    rss_kib,
    wait_all_closed,
    wait_closed,
    wait_log_count,
)
from tests.support.backend import SipBackend
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request, response_to

Legit = Callable[..., LegitTraffic]

HANDSHAKE_TIMEOUT_MS = 500
MAX_MSG_TIME = 1.0
MAX_CHUNKS = 4
MAX_MSG_SIZE = 16384

SETTINGS = {
    "tls_handshake_timeout": HANDSHAKE_TIMEOUT_MS,
    "tcp_max_msg_time": MAX_MSG_TIME,
    "tls_max_msg_chunks": MAX_CHUNKS,
    "max_msg_size": MAX_MSG_SIZE,
    "tls_send_timeout": 1500,
    "conn_buffer_limit": 65536,
}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with SipBackend() as backend:
        relay = RelayProcess(
            tmp_path_factory.mktemp("hostile"),
            {**SETTINGS, "listener": [RelayProcess.tls_listener(backend.port)]},
        )
        try:
            yield Target(relay, backend)
        finally:
            relay.stop()


def check_counted(
    t: Target,
    before: Metrics,
    traffic: LegitTraffic,
    *,
    extra_requests: int = 0,
    extra_answers: int | None = None,
) -> dict[str, int]:
    """Legitimate traffic clean and each message counted by the relay (plus the complete
    requests offenders sent, `extra_requests`); the figures for the docs."""
    result = traffic.check(t.backend)
    t.settle()
    after = t.scrape()
    answers = extra_requests if extra_answers is None else extra_answers
    assert (
        after.delta(before, "tlstrace_sip_messages_total", direction="from_client")
        == result.sent + extra_requests
    )
    assert (
        after.delta(before, "tlstrace_sip_messages_total", direction="to_client", kind="2xx")
        == result.answered + answers
    )
    return {
        "legit_sent": result.sent,
        "legit_lost": result.lost,
        "legit_errors": len(result.errors),
        "legit_connections": result.connections,
    }


def offenders_closed(socks: list, timeout: float = 30.0) -> None:
    outcome = wait_all_closed(socks, timeout)
    assert outcome["open"] == 0, outcome


# -- not TLS at all --------------------------------------------------------------------------


PLAIN_SIP = [
    request(),
    request("REGISTER", "reg@x", 2),
    request("INVITE", "inv@x", body=b"v=0\r\n"),
    response_to(request()),
    b"options sip:x SIP/2.0\r\n\r\n",
    b"ACK",
]


def test_plain_sip_on_the_tls_port(target: Target, legit: Legit, record: Record) -> None:
    before = target.scrape()
    traffic = legit(target.port())
    socks = []
    for i in range(30):
        s = connect(target.port())
        s.sendall(PLAIN_SIP[i % len(PLAIN_SIP)])
        socks.append(s)
    ports = [local_port(s) for s in socks]
    offenders_closed(socks)
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.handshake_failed(port, "plain_sip") in log
    assert after.delta(before, "tlstrace_handshake_failures_total", reason="plain_sip") == 30
    assert after.delta(before, "tlstrace_connections_closed_total", reason="handshake_failed") == 30
    record(offenders=30, closed=30, reason="plain_sip", **figures)


def test_random_bytes(target: Target, legit: Legit, record: Record) -> None:
    rng = random.Random(6)
    blobs = [rng.randbytes(rng.choice([1, 2, 5, 16, 100, 1000, 5000])) for _ in range(40)]
    # and some that start like a TLS record, to get past the first-byte check
    blobs += [b"\x16\x03" + rng.randbytes(rng.choice([3, 50, 3000])) for _ in range(10)]
    blobs += [b"\x16\x03\x01" + rng.randbytes(40) for _ in range(5)]
    before = target.scrape()
    traffic = legit(target.port())
    socks, ports = [], []
    for blob in blobs:
        s = connect(target.port())
        with contextlib.suppress(OSError):  # already closed by the relay: fine
            s.sendall(blob)
        socks.append(s)
        ports.append(local_port(s))
    offenders_closed(socks)
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert f" inbound 127.0.0.1:{port}: TLS handshake failed: " in log, port
    reasons = {
        r
        for r in ("not_tls", "plain_sip", "unsupported_version", "handshake_timeout", "other")
        if after.delta(before, "tlstrace_handshake_failures_total", reason=r)
    }
    assert after.delta(before, "tlstrace_handshake_failures_total") == len(blobs)
    assert after.delta(
        before, "tlstrace_connections_closed_total", reason="handshake_failed"
    ) == len(blobs)
    record(offenders=len(blobs), closed=len(blobs), reasons=sorted(reasons), **figures)


def test_not_tls_reason_names_the_first_bytes(target: Target) -> None:
    with connect(target.port()) as s:
        port = local_port(s)
        s.sendall(b"\x00\x01\x02\x03garbage")
        assert wait_closed(s)[0] == "eof"
    line = target.relay.wait_log(target.handshake_failed(port, "not_tls"))
    assert "0001020367617262" in line.split(target.handshake_failed(port, "not_tls"))[1]


# -- handshakes that do not complete ---------------------------------------------------------


def test_truncated_client_hello(target: Target, legit: Legit, record: Record) -> None:
    hello = real_client_hello()
    cuts = [1, 3, 5, 6, 9, 40, 100, len(hello) // 2, len(hello) - 1]
    before = target.scrape()
    traffic = legit(target.port())
    held, dropped = [], []
    for cut in cuts:
        s = connect(target.port())
        s.sendall(hello[:cut])
        held.append(s)  # then silence: the handshake timeout closes it
        s = connect(target.port())
        s.sendall(hello[:cut])
        s.close()  # then gone: counted as peer_closed
        dropped.append(s)
    ports = [local_port(s) for s in held]
    offenders_closed(held)
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.handshake_failed(port, "handshake_timeout") in log
    assert after.delta(
        before, "tlstrace_handshake_failures_total", reason="handshake_timeout"
    ) == len(cuts)
    assert after.delta(before, "tlstrace_handshake_failures_total", reason="peer_closed") == len(
        cuts
    )
    record(
        offenders=2 * len(cuts),
        closed=2 * len(cuts),
        reasons=["handshake_timeout", "peer_closed"],
        **figures,
    )


@pytest.mark.parametrize("version", [SSL3, TLS1_0, TLS1_1], ids=["SSLv3", "TLSv1.0", "TLSv1.1"])
def test_old_protocol_versions(target: Target, legit: Legit, record: Record, version: int) -> None:
    before = target.scrape()
    traffic = legit(target.port())
    socks = []
    for record_version in (version, TLS1_0, version, TLS1_0, version):
        s = connect(target.port())
        s.sendall(crafted_client_hello(version, record_version=record_version))
        socks.append(s)
    ports = [local_port(s) for s in socks]
    for s in socks:
        how, data = wait_closed(s)
        assert how == "eof"
        assert data[:1] == b"\x15" and data[5:6] == b"\x02"  # a fatal alert, then closed
        s.close()
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.handshake_failed(port, "unsupported_version") in log
    assert after.delta(
        before, "tlstrace_handshake_failures_total", reason="unsupported_version"
    ) == len(socks)
    record(offenders=len(socks), closed=len(socks), reason="unsupported_version", **figures)


def test_crafted_tls12_hello_is_answered(target: Target) -> None:
    """The control for the cases above: the same builder's TLS 1.2 hello gets a ServerHello,
    so the old versions are refused for their version, not for a malformed hello."""
    with connect(target.port()) as s:
        s.sendall(crafted_client_hello(TLS1_2))
        s.settimeout(10)
        data = s.recv(5 + 6)
        assert data[:3] == b"\x16\x03\x03" and data[5] == 0x02  # ServerHello, TLS 1.2


def test_thousand_unfinished_handshakes(target: Target, legit: Legit, record: Record) -> None:
    """1,000 connections send a real ClientHello at once and never finish the handshake."""
    n = 1000
    hello = real_client_hello()
    before = target.scrape()
    log_before = target.relay.log.count("TLS handshake failed: handshake_timeout")
    traffic = legit(target.port(), clients=4)
    with many_sockets(n, target.port()) as socks:
        for s in socks:
            s.sendall(hello)
        ports = [local_port(s) for s in socks]
        traffic.wait_progress()
        offenders_closed(socks, timeout=60)
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = wait_log_count(target.relay, "TLS handshake failed: handshake_timeout", log_before + n)
    for port in ports:
        assert target.handshake_failed(port, "handshake_timeout") in log
    assert after.delta(before, "tlstrace_handshake_failures_total", reason="handshake_timeout") == n
    assert after.delta(before, "tlstrace_connections_closed_total", reason="handshake_failed") == n
    record(offenders=n, closed=n, reason="handshake_timeout", **figures)


# -- slow-loris --------------------------------------------------------------------------------


def test_slowloris_one_byte_per_tls_record(target: Target, legit: Legit, record: Record) -> None:
    """Each record carries one byte of the message: the chunk limit closes it."""
    n = 10
    msg = request("INVITE", "loris@x", body=b"v=0\r\n")
    before = target.scrape()
    traffic = legit(target.port())
    lorises = [TlsClient(target.port()) for _ in range(n)]
    ports = [c.local_port for c in lorises]
    alive = list(lorises)
    for i in range(MAX_CHUNKS + 2):
        for c in list(alive):
            try:
                c.send(msg[i : i + 1])
            except (OSError, ssl.SSLError):
                alive.remove(c)
        traffic.wait_progress(2)
    for c in lorises:
        assert c.wait_closed()
        c.close()
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.closed(port, "Framing error (too_many_chunks: ") in log
    assert after.delta(before, "tlstrace_framing_errors_total", kind="too_many_chunks") == n
    assert after.delta(before, "tlstrace_connections_closed_total", reason="framing_error") == n
    record(offenders=n, closed=n, reason="too_many_chunks", **figures)


def test_slowloris_partial_message_then_silence(
    target: Target, legit: Legit, record: Record
) -> None:
    """Half a message in complete records, then nothing: tcp_max_msg_time closes it."""
    n = 10
    before = target.scrape()
    traffic = legit(target.port())
    lorises = [TlsClient(target.port()) for _ in range(n)]
    ports = [c.local_port for c in lorises]
    for c in lorises:
        c.send(request()[:50])
    for c in lorises:
        assert c.wait_closed(timeout=20)
        c.close()
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.closed(port, "Timeout waiting for a complete message (") in log
    assert after.delta(before, "tlstrace_framing_errors_total", kind="message_timeout") == n
    assert after.delta(before, "tlstrace_connections_closed_total", reason="message_timeout") == n
    record(offenders=n, closed=n, reason="message_timeout", **figures)


def test_slowloris_one_record_dripped_byte_by_byte(
    target: Target, legit: Legit, record: Record
) -> None:
    """One TLS record sent one byte per TCP segment: never a complete record, so the framer
    never sees a byte; tcp_max_msg_time still closes it (an incomplete TLS record counts as
    an incomplete message)."""
    before = target.scrape()
    traffic = legit(target.port(), newcomers=False)
    loris = RawTlsClient(target.port())
    port = local_port(loris.sock)
    data = loris.record(request("MESSAGE", "drip@x", body=b"d" * 400))
    closed = not loris.drip(data[:-1], pause=0.1, until=time.monotonic() + 4 * MAX_MSG_TIME + 1)
    loris.close()
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    record(offenders=1, closed=int(closed), reason="message_timeout", **figures)
    assert closed
    assert target.closed(port, "Timeout waiting for a complete message (") in target.relay.log
    assert after.delta(before, "tlstrace_connections_closed_total", reason="message_timeout") == 1
    assert after.delta(before, "tlstrace_framing_errors_total", kind="message_timeout") == 1


# -- framing -----------------------------------------------------------------------------------


def test_fragmentation_beyond_max_chunks(target: Target, legit: Legit, record: Record) -> None:
    n = 8
    msg = request("INVITE", "frag@x", body=b"v=0\r\n" * 200)
    over = MAX_CHUNKS + 2
    step = len(msg) // over + 1
    before = target.scrape()
    traffic = legit(target.port())
    # the control: exactly tls_max_msg_chunks records is allowed
    with TlsClient(target.port()) as ok:
        q = len(msg) // MAX_CHUNKS + 1
        ok.send_records([msg[i : i + q] for i in range(0, len(msg), q)])
        assert ok.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
        ok.close_notify()
    fragmenters = [TlsClient(target.port()) for _ in range(n)]
    ports = [c.local_port for c in fragmenters]
    for c in fragmenters:
        with contextlib.suppress(OSError, ssl.SSLError):
            c.send_records([msg[i : i + step] for i in range(0, len(msg), step)])
    for c in fragmenters:
        assert c.wait_closed()
        c.close()
    figures = check_counted(target, before, traffic, extra_requests=1)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.closed(port, "Framing error (too_many_chunks: ") in log
    assert after.delta(before, "tlstrace_framing_errors_total", kind="too_many_chunks") == n
    record(offenders=n, closed=n, reason="too_many_chunks", **figures)


def too_large_declared() -> bytes:
    return (
        request("MESSAGE", "big@x", headers=["Content-Type: text/plain"]).replace(
            b"Content-Length: 0", f"Content-Length: {MAX_MSG_SIZE}".encode()
        )
        + b"x" * 100
    )


def too_large_headers() -> bytes:
    return b"MESSAGE sip:x SIP/2.0\r\n" + b"X-Filler: " + b"f" * (MAX_MSG_SIZE + 100) + b"\r\n"


def test_messages_over_max_msg_size(target: Target, legit: Legit, record: Record) -> None:
    offenders = [too_large_declared(), too_large_headers()] * 4
    # the control: a message of exactly max_msg_size bytes is relayed
    size = MAX_MSG_SIZE
    while len(exact := request("MESSAGE", "exact@x", body=b"e" * size)) > MAX_MSG_SIZE:
        size -= len(exact) - MAX_MSG_SIZE
    assert len(exact) == MAX_MSG_SIZE
    before = target.scrape()
    traffic = legit(target.port())
    with TlsClient(target.port()) as ok:
        ok.send(exact)
        assert ok.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
        ok.close_notify()
    clients = [TlsClient(target.port()) for _ in offenders]
    ports = [c.local_port for c in clients]
    for c, data in zip(clients, offenders, strict=True):
        with contextlib.suppress(OSError, ssl.SSLError):
            c.send(data)
    for c in clients:
        assert c.wait_closed()
        c.close()
    figures = check_counted(target, before, traffic, extra_requests=1)
    after = target.scrape()
    log = target.relay.log
    for port, data in zip(ports, offenders, strict=True):
        detail = (
            f"no end of headers within {MAX_MSG_SIZE} bytes"
            if b"X-Filler" in data
            else f"exceeds max_msg_size {MAX_MSG_SIZE}"
        )
        line = target.closed(port, "Framing error (too_large: ")
        assert line in log
        assert detail in log.split(line, 1)[1].split("\n", 1)[0]
    assert after.delta(before, "tlstrace_framing_errors_total", kind="too_large") == len(offenders)
    assert not any(b"big@x" in m for c in target.backend.conns for m in c.messages)
    record(offenders=len(offenders), closed=len(offenders), reason="too_large", **figures)


CONTENT_LENGTHS = {
    "-5": "bad_content_length",
    "-0": "bad_content_length",
    "+5": "bad_content_length",
    "99999999999999999999": "bad_content_length",
    "18446744073709551617": "bad_content_length",
    "4294967296": "too_large",
    "9999999999": "too_large",
    "abc": "bad_content_length",
    "0x10": "bad_content_length",
    "1e3": "bad_content_length",
    "12 34": "bad_content_length",
    "": "bad_content_length",
    "\u0661\u0662": "bad_content_length",  # Arabic-Indic digits: not ASCII
    "5\r\nContent-Length: 6": "ambiguous_length",
}


def test_bad_content_length(target: Target, legit: Legit, record: Record) -> None:
    cases = list(CONTENT_LENGTHS.items())
    before = target.scrape()
    traffic = legit(target.port())
    clients = [TlsClient(target.port()) for _ in cases]
    ports = [c.local_port for c in clients]
    for c, (value, _) in zip(clients, cases, strict=True):
        msg = request(call_id=f"cl-{value!r}@x").replace(
            b"Content-Length: 0", b"Content-Length: " + value.encode()
        )
        with contextlib.suppress(OSError, ssl.SSLError):
            c.send(msg)
    for c in clients:
        assert c.wait_closed()
        c.close()
    figures = check_counted(target, before, traffic)
    after = target.scrape()
    log = target.relay.log
    for port, (_, kind) in zip(ports, cases, strict=True):
        assert target.closed(port, f"Framing error ({kind}: ") in log
    for kind in set(CONTENT_LENGTHS.values()):
        expected = sum(1 for k in CONTENT_LENGTHS.values() if k == kind)
        assert after.delta(before, "tlstrace_framing_errors_total", kind=kind) == expected
    assert not any(b"cl-" in m for c in target.backend.conns for m in c.messages)
    record(offenders=len(cases), closed=len(cases), values=list(CONTENT_LENGTHS), **figures)


BAD_HEADER_BYTES = [
    b"OPTIONS sip:x SIP/2.0\r\nVia: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS sip:x\x00 SIP/2.0\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nVia: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nVia: ab\r\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nVia: a\nX: b\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\x00\r\n\r\n",
    b"OPTIONS sip:x SIP/2.0\r\n\x00\r\nContent-Length: 0\r\n\r\n",
]


def test_nul_and_bare_cr_in_headers(target: Target, legit: Legit, record: Record) -> None:
    before = target.scrape()
    traffic = legit(target.port())
    # the control: NUL bytes and bare CRs in a body are data, relayed untouched
    body = b"\x00\r\x00bin\rary\n\x00"
    with TlsClient(target.port()) as ok:
        ok.send(request("MESSAGE", "nul-body@x", body=body))
        assert ok.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
        ok.close_notify()
    clients = [TlsClient(target.port()) for _ in BAD_HEADER_BYTES]
    ports = [c.local_port for c in clients]
    for c, data in zip(clients, BAD_HEADER_BYTES, strict=True):
        c.send(data)
    for c in clients:
        assert c.wait_closed()
        c.close()
    figures = check_counted(target, before, traffic, extra_requests=1)
    after = target.scrape()
    log = target.relay.log
    for port in ports:
        assert target.closed(port, "Framing error (bad_header_bytes: ") in log
    assert after.delta(before, "tlstrace_framing_errors_total", kind="bad_header_bytes") == len(
        BAD_HEADER_BYTES
    )
    assert request("MESSAGE", "nul-body@x", body=body) in [
        m for c in target.backend.conns for m in c.messages
    ]
    record(
        offenders=len(BAD_HEADER_BYTES),
        closed=len(BAD_HEADER_BYTES),
        reason="bad_header_bytes",
        **figures,
    )


# -- connection flood ----------------------------------------------------------------------------


def test_connection_flood_up_to_the_limit(tmp_path: Path, legit: Legit, record: Record) -> None:
    """Far more connections than tcp_max_connections: the excess is refused and counted, the
    connections already open carry on, and the capacity comes back."""
    limit, flood = 40, 400
    with SipBackend() as backend:
        relay = RelayProcess(
            tmp_path / "flood",
            {
                **SETTINGS,
                "tcp_max_connections": limit,
                "listener": [RelayProcess.tls_listener(backend.port)],
            },
        )
        try:
            t = Target(relay, backend)
            before = t.scrape()
            # new legitimate connections would be refused while the relay is full, by design
            traffic = legit(relay.port(), clients=3, newcomers=False)
            with many_sockets(flood, relay.port()) as socks:
                traffic.wait_progress()
                outcome = wait_all_closed(socks)
            result = traffic.check(backend)
            t.settle()
            after = t.scrape()
            assert outcome["open"] == 0
            # each flood connection was either refused at once, or accepted and then closed
            # by the handshake timeout (it never sends a byte)
            refused = after.delta(before, "tlstrace_connections_refused_total")
            timed_out = after.delta(
                before, "tlstrace_handshake_failures_total", reason="handshake_timeout"
            )
            assert refused > 0 and timed_out >= limit - 3
            assert refused + timed_out == flood
            relay.wait_log(
                f"refusing connections on tls:127.0.0.1:{relay.port()}: "
                f"tcp_max_connections ({limit}) reached"
            )
            with TlsClient(relay.port()) as again:  # the capacity is back
                again.send(request(call_id="again@x"))
                assert again.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
                again.close_notify()
            record(
                offenders=flood,
                refused=refused,
                accepted_then_timed_out=timed_out,
                legit_sent=result.sent,
                legit_lost=result.lost,
                legit_errors=len(result.errors),
            )
        finally:
            relay.stop()


# -- a client that never reads -------------------------------------------------------------------


def never_reading_client(t: Target, call_id: str) -> TlsClient:
    """A client whose backend then sends it 12 MB it never reads."""
    c = TlsClient(t.port())
    c.send(request("SUBSCRIBE", call_id))
    assert c.recv_messages(1)[0].startswith(b"SIP/2.0 200 OK")
    marker = f"Call-ID: {call_id}\r\n".encode()
    index = next(i for i, bc in enumerate(t.backend.conns) if any(marker in m for m in bc.messages))
    for i in range(800):  # each under max_msg_size
        t.backend.send(index, request("NOTIFY", f"{call_id}-notify{i}", body=b"n" * 15000))
    return c


def test_client_that_never_reads_is_bounded(target: Target, legit: Legit, record: Record) -> None:
    """The backend floods a client that reads nothing: the relay holds at most about
    conn_buffer_limit for it, stops reading that backend connection, and after
    tls_send_timeout aborts the client (what it held is counted) and closes the backend
    connection; everyone else carries on, and no socket stays behind."""
    before = target.scrape()
    rss_before = rss_kib(target.pid)
    traffic = legit(target.port())
    sleepers = [never_reading_client(target, f"sleeper{i}@x") for i in range(3)]
    ports = [c.local_port for c in sleepers]
    try:
        for port in ports:
            target.relay.wait_log(
                target.closed(port, "Send timeout (peer left data unread for over 1500 ms)"),
                timeout=20,
            )
        growth_kib = rss_kib(target.pid) - rss_before
        # with the sleepers still connected: no connection open, no fd more than at rest
        figures = check_counted(target, before, traffic, extra_requests=3)
        after = target.scrape()
        assert after.delta(before, "tlstrace_connections_closed_total", reason="send_timeout") == 3
        assert (
            after.delta(before, "tlstrace_connections_closed_total", reason="message_timeout") == 0
        )
        dropped = after.delta(before, "tlstrace_bytes_dropped_total", reason="send_timeout")
        assert dropped > 0
    finally:
        for c in sleepers:
            c.close()
    assert growth_kib < 32 * 1024
    record(
        offenders=3,
        closed=3,
        reason="send_timeout",
        bytes_dropped=dropped,
        relay_rss_growth_kib=growth_kib,
        **figures,
    )
