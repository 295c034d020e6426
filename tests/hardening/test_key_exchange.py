"""Clients that choose what a handshake costs the relay (issue 15, part 2).

A TLS 1.3 client may offer only ffdhe8192: with OpenSSL's default groups the server then does
an 8192-bit Diffie-Hellman for each ClientHello (124 ms of CPU against 0.6 ms for X25519), and
64 clients replaying one canned ClientHello held the relay's core at 100 %. Now the groups are
a setting of each domain, by default X25519, P-256 and P-384: such a hello is answered with a
fatal alert before any key is computed. Each group is offered by a real client (Debian's
`openssl s_client`, and stdlib clients that offer one group with `set_ecdh_curve`), and a
per-source rate of new connections (`handshake_rate_per_source`) bounds what one address can
cost. Legitimate clients run alongside every attack and must see zero errors.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.conftest import Record
from tests.hardening.harness import (
    LegitTraffic,
    Metrics,
    Target,
    real_client_hello,
    tls_client_context,
    wait_closed,
    wait_log_count,
    wait_open_inbound,
)
from tests.support.backend import SipBackend
from tests.support.pki import Pki
from tests.support.relay import RelayProcess, to_toml
from tests.support.sip import TlsClient, request
from tlstrace.tls import groups as tls_groups

Legit = Callable[..., LegitTraffic]

DEFAULT = ["X25519", "P-256", "P-384"]
OTHERS = ["X448", "P-521", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"]
#: how `openssl s_client` names the key exchange it did ("Server Temp Key: ...")
TEMP_KEY = {
    "X25519": "X25519, 253 bits",
    "X448": "X448, 448 bits",
    "P-256": "ECDH, prime256v1, 256 bits",
    "P-384": "ECDH, secp384r1, 384 bits",
    "P-521": "ECDH, secp521r1, 521 bits",
    **{f"ffdhe{n}": f"DH, {n} bits" for n in (2048, 3072, 4096, 6144, 8192)},
}
#: OpenSSL's short names, which the stdlib's set_ecdh_curve takes
SN = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
#: a TLS alert record: fatal (2), handshake_failure (40)
HANDSHAKE_FAILURE_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"


SINGLE = ("X25519", "P-256", "P-384")


@pytest.fixture(scope="module")
def rsa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # RSA, so that a TLS 1.2 client offering a single curve can still be served (with an
    # ECDSA certificate it would have to offer the certificate's curve too)
    files = Pki(tmp_path_factory.mktemp("pki")).leaf("localhost", names=["localhost"], kind="rsa")
    return files.cert, files.key


@pytest.fixture(scope="module")
def module_backend() -> Iterator[SipBackend]:
    with SipBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, rsa: tuple[Path, Path], module_backend: SipBackend
) -> Iterator[Target]:
    cert, key = rsa
    relay = RelayProcess(
        tmp_path_factory.mktemp("default"),
        {
            "tls_handshake_timeout": 2000,
            "listener": [RelayProcess.tls_listener(module_backend.port)],
            "server_domain": [{"name": "default", "certificate": cert, "private_key": key}],
        },
    )
    try:
        yield Target(relay, module_backend)
    finally:
        relay.stop()


@pytest.fixture(scope="module")
def restricted(
    tmp_path_factory: pytest.TempPathFactory, rsa: tuple[Path, Path], module_backend: SipBackend
) -> Iterator[Callable[[str], int]]:
    """One relay, a listener per group of SINGLE whose domain takes that group only, one whose
    domain opted in to ffdhe2048, and one ("sni") with two domains: port(name) is its port."""
    cert, key = rsa
    domains: list[dict[str, Any]] = []
    listeners: list[dict[str, Any]] = []
    names = [*SINGLE, "ffdhe2048", "sni"]
    for group in names[:-1]:
        domains.append(
            {
                "name": f"only-{group}",
                "certificate": cert,
                "private_key": key,
                "groups": [group] if group != "ffdhe2048" else [*DEFAULT, group],
            }
        )
        listeners.append(RelayProcess.tls_listener(module_backend.port, domains=[f"only-{group}"]))
    # and one listener, two domains chosen by SNI, each with its own groups
    domains += [
        {
            "name": "a",
            "certificate": cert,
            "private_key": key,
            "match_sip_domain": ["a.example"],
            "groups": ["P-384"],
        },
        {
            "name": "b",
            "certificate": cert,
            "private_key": key,
            "match_sip_domain": ["b.example", "*"],
            "groups": ["X25519"],
        },
    ]
    listeners.append(RelayProcess.tls_listener(module_backend.port, domains=["a", "b"]))
    relay = RelayProcess(
        tmp_path_factory.mktemp("restricted"), {"listener": listeners, "server_domain": domains}
    )
    try:
        yield lambda group: relay.port(names.index(group))
    finally:
        relay.stop()


def s_client(port: int, *args: str, sni: str = "localhost") -> str:
    """Debian's `openssl s_client` against the relay: its whole output (-msg: every message)."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni, "-msg", *args],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    return r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def temp_key(output: str) -> str | None:
    m = re.search(r"^Server Temp Key: (.*)$", output, re.M)
    return m.group(1) if m else None


def stdlib_client(group: str, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    """A Python client offering exactly one group (the stdlib's own set_ecdh_curve)."""
    ctx = tls_client_context()
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ecdh_curve(SN.get(group, group))
    return ctx


def options_answered(port: int, ctx: ssl.SSLContext, tag: str) -> bool:
    """A TLS connection with `ctx`, one OPTIONS, its 200 OK; False when the handshake fails."""
    try:
        client = TlsClient(port, ctx=ctx)
    except ssl.SSLError:
        return False
    with client:
        client.send(request("OPTIONS", tag))
        answer = client.recv_messages(1)[0]
        assert answer.startswith(b"SIP/2.0 200 ") and f"Call-ID: {tag}\r\n".encode() in answer
        client.close_notify()
    return True


# -- every group, offered alone --------------------------------------------------------------


@pytest.mark.parametrize("group", DEFAULT)
def test_a_default_group_is_negotiated(target: Target, group: str) -> None:
    for args in (["-tls1_3"], ["-tls1_2"]):
        out = s_client(target.port(), "-groups", group, *args)
        assert temp_key(out) == TEMP_KEY[group], out
    assert options_answered(target.port(), stdlib_client(group), f"{group}-13")
    assert options_answered(
        target.port(), stdlib_client(group, ssl.TLSVersion.TLSv1_2), f"{group}-12"
    )


@pytest.mark.parametrize("group", SINGLE)
def test_a_domain_takes_only_its_groups(restricted: Callable[[str], int], group: str) -> None:
    """`groups = ["<group>"]`: that group is negotiated, the other default ones refused."""
    for only in SINGLE:
        for args in (["-tls1_3"], ["-tls1_2"]):
            out = s_client(restricted(only), "-groups", group, *args)
            assert (temp_key(out) == TEMP_KEY[group]) is (only == group), (only, out)
        assert options_answered(restricted(only), stdlib_client(group), f"{group}-on-{only}") is (
            only == group
        )


@pytest.mark.parametrize("group", OTHERS)
def test_any_other_group_fails_the_handshake(target: Target, group: str) -> None:
    before = target.scrape()
    out = s_client(target.port(), "-groups", group, "-tls1_3")
    assert temp_key(out) is None, out
    assert "alert handshake failure" in out, out
    assert "ServerHello" not in out  # refused before the server computed any key
    assert not options_answered(target.port(), stdlib_client(group), f"{group}-13")
    tls12 = not group.startswith("ffdhe")  # no TLS 1.2 finite-field DH here (no DH params)
    if tls12:
        out = s_client(target.port(), "-groups", group, "-tls1_2")
        assert temp_key(out) is None and "alert handshake failure" in out, out
    after = target.scrape()
    assert (
        after.delta(
            before,
            "tlstrace_handshake_failures_total",
            direction="inbound",
            reason="no_shared_group",
        )
        == 2
    )
    assert after.delta(
        before, "tlstrace_handshake_failures_total", direction="inbound", reason="no_shared_cipher"
    ) == (1 if tls12 else 0)
    target.relay.wait_log(
        "TLS handshake failed: no_shared_group (ssl routines: no suitable key share)"
    )


def test_domains_on_one_listener_each_have_their_groups(restricted: Callable[[str], int]) -> None:
    """a.example takes P-384 only, b.example (and no SNI) X25519 only, on one listener."""
    port = restricted("sni")
    for sni, group, ok in (
        ("a.example", "P-384", True),
        ("a.example", "X25519", False),
        ("b.example", "X25519", True),
        ("b.example", "P-384", False),
    ):
        out = s_client(port, "-groups", group, "-tls1_3", sni=sni)
        assert (temp_key(out) == TEMP_KEY[group]) is ok, (sni, group, out)
    assert options_answered(port, stdlib_client("X25519"), "sni-none-x25519")
    assert not options_answered(port, stdlib_client("P-384"), "sni-none-p384")


def test_a_domain_can_opt_in_to_a_finite_field_group(
    target: Target, restricted: Callable[[str], int]
) -> None:
    out = s_client(restricted("ffdhe2048"), "-groups", "ffdhe2048", "-tls1_3")
    assert temp_key(out) == TEMP_KEY["ffdhe2048"], out
    assert temp_key(s_client(target.port(), "-groups", "ffdhe2048", "-tls1_3")) is None


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [("ffdhe8192:X25519", "X25519"), ("ffdhe8192:P-384", "P-384"), ("X448:P-256", "P-256")],
)
def test_hello_retry_request_to_an_allowed_group(target: Target, offered: str, chosen: str) -> None:
    """The client's key share is for a group the relay does not take, but it lists one the
    relay does: TLS 1.3 asks it to try again (HelloRetryRequest) with that group."""
    out = s_client(target.port(), "-groups", offered, "-tls1_3")
    assert temp_key(out) == TEMP_KEY[chosen], out
    # -msg shows the HelloRetryRequest as a first ServerHello
    assert out.count(", ServerHello") == 2, out
    # a Python client offering the same (through tlstrace's own group setting) gets through
    ctx = tls_client_context()
    tls_groups.set_groups(ctx, offered.split(":"))
    assert options_answered(target.port(), ctx, f"hrr-{offered}")


# -- the attack ----------------------------------------------------------------------------------


def canned_ffdhe8192_hello() -> bytes:
    ctx = tls_client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ecdh_curve("ffdhe8192")
    return real_client_hello(ctx)


def replay(port: int, hello: bytes, answers: list[bytes], lock: threading.Lock) -> None:
    """One attacker connection: the canned hello, then read whatever comes until closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(hello)
        _, data = wait_closed(s, timeout=30)
    with lock:
        answers.append(data)


def test_canned_ffdhe8192_hellos_are_refused_at_once(
    target: Target, legit: Legit, record: Record
) -> None:
    """64 clients replay one canned ClientHello that offers ffdhe8192 only, as in the issue.
    Each gets a handshake_failure alert in answer to its hello: no ServerHello, so no key was
    computed; nobody waits for a Finished that never comes."""
    hello = canned_ffdhe8192_hello()
    # first one alone: the answer is the alert and nothing else
    answers: list[bytes] = []
    lock = threading.Lock()
    replay(target.port(), hello, answers, lock)
    assert answers == [HANDSHAKE_FAILURE_ALERT]

    clients, rounds = 64, 4
    before = target.scrape()
    cpu_before = _cpu(target.pid)
    traffic = legit(target.port())
    for _ in range(rounds):
        threads = [
            threading.Thread(target=replay, args=(target.port(), hello, answers, lock))
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        traffic.wait_progress(2)
    result = traffic.check(target.backend)
    target.settle()
    cpu = _cpu(target.pid) - cpu_before
    after = target.scrape()
    n = clients * rounds
    assert answers == [HANDSHAKE_FAILURE_ALERT] * (n + 1)
    assert (
        after.delta(
            before,
            "tlstrace_handshake_failures_total",
            direction="inbound",
            reason="no_shared_group",
        )
        == n
    )
    assert (
        after.delta(before, "tlstrace_sip_messages_total", direction="from_client") == result.sent
    )
    wait_log_count(target.relay, "TLS handshake failed: no_shared_group", n + 1)
    record(
        offenders=n,
        refused=n,
        reason="no_shared_group",
        relay_cpu_s=round(cpu, 2),
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


def _cpu(pid: int) -> float:
    """utime + stime of the relay process, in seconds."""
    import os

    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the per-source rate ----------------------------------------------------------------------

RATE, BURST = 20.0, 20


@pytest.fixture
def limited(relay_factory: Callable[..., RelayProcess], backend: SipBackend) -> RelayProcess:
    return relay_factory(
        {
            "handshake_rate_per_source": RATE,
            "handshake_rate_burst": BURST,
            "tls_handshake_timeout": 2000,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


def attempt(port: int, source: str, hello: bytes) -> bool:
    """A connection from `source` that sends a real ClientHello: True when the relay answered
    it (a ServerHello), False when the connection was refused before it read a byte."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    with s:
        with contextlib.suppress(OSError):
            s.sendall(hello)
        s.settimeout(10)
        try:
            data = s.recv(5)
        except ConnectionResetError:
            return False
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return data[:1] == b"\x16"


def test_one_source_over_its_rate_is_refused_at_accept(
    limited: RelayProcess, backend: SipBackend, legit: Legit, record: Record
) -> None:
    """One address opens 400 connections as fast as it can; the legitimate clients (another
    address, opening a new connection for every request at a pace under the limit) see zero
    errors. The excess is refused before a byte is read, counted, and logged a few times, not
    once per connection."""
    port = limited.port()
    hello = real_client_hello()
    before = Metrics.scrape(limited)
    traffic = legit(port, pace=0.1)
    n = 400
    start = time.monotonic()
    outcomes = [attempt(port, "127.0.0.2", hello) for _ in range(n)]
    elapsed = time.monotonic() - start
    admitted, refused = outcomes.count(True), outcomes.count(False)
    assert refused > 0
    # GCRA: never more than the burst plus the rate over the time the attack took
    assert BURST <= admitted <= BURST + RATE * elapsed + 1, (admitted, elapsed)
    result = traffic.check(backend)
    wait_open_inbound(limited, 0)
    after = Metrics.scrape(limited)
    assert after.delta(before, "tlstrace_connections_rate_limited_total") == refused
    # refused connections never reached OpenSSL: accepted = admitted attackers + legit
    assert (
        after.delta(before, "tlstrace_connections_accepted_total") == admitted + result.connections
    )
    lines = wait_log_count(limited, "over handshake_rate_per_source (20/s, burst 20)", 1).count(
        "over handshake_rate_per_source"
    )
    assert "refusing new connections from 127.0.0.2 on tls:127.0.0.1:" in limited.log
    assert lines <= 1 + elapsed / 10 + 1 < refused
    # the address gets its rate back once it slows down
    time.sleep(BURST / RATE)
    assert options_answered_from(port, "127.0.0.2")
    record(
        offenders=n,
        admitted=admitted,
        refused=refused,
        log_lines=lines,
        legit_sent=result.sent,
        legit_lost=result.lost,
        legit_errors=len(result.errors),
    )


def options_answered_from(port: int, source: str) -> bool:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock = tls_client_context().wrap_socket(raw)
    with sock:
        sock.sendall(request("OPTIONS", "after-the-flood"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"SIP/2.0 200 ")


def test_a_reload_turns_the_rate_on(relay: RelayProcess) -> None:
    """SIGHUP with handshake_rate_per_source now set: new connections are limited at once."""
    hello = real_client_hello()
    assert all(attempt(relay.port(), "127.0.0.2", hello) for _ in range(10))
    relay.config_path.write_text(
        to_toml({**relay.config, "handshake_rate_per_source": 1.0, "handshake_rate_burst": 2})
    )
    relay.signal(signal.SIGHUP)
    relay.wait_log("reloaded")
    start = time.monotonic()
    outcomes = [attempt(relay.port(), "127.0.0.2", hello) for _ in range(20)]
    elapsed = time.monotonic() - start
    assert 2 <= outcomes.count(True) <= 2 + elapsed + 1
    assert Metrics.scrape(relay).get("tlstrace_connections_rate_limited_total") == outcomes.count(
        False
    )


def test_the_rate_is_off_by_default(relay: RelayProcess) -> None:
    hello = real_client_hello()
    assert all(attempt(relay.port(), "127.0.0.2", hello) for _ in range(60))
    assert Metrics.scrape(relay).get("tlstrace_connections_rate_limited_total") == 0
