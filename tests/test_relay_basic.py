"""SIP over TLS through the running relay to a real TCP backend: nothing lost, nothing changed."""

from __future__ import annotations

import random
import threading

from tests.support.backend import SipBackend
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request, response_to


def test_one_request_and_its_response(relay: RelayProcess, backend: SipBackend) -> None:
    with TlsClient(relay.port()) as client:
        req = request("OPTIONS", "one@t")
        client.send(req)
        (resp,) = client.recv_messages(1)
        assert backend.wait_messages(1) == [req]
        assert resp == response_to(req)


def _varied_messages(rng: random.Random, tag: str, n: int) -> list[bytes]:
    msgs = []
    for i in range(n):
        size = rng.choice([0, 0, 10, 300, 600, 1500, 4000, 17000, 40000])
        body = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
        msgs.append(
            request(
                rng.choice(["INVITE", "MESSAGE", "INFO", "OPTIONS"]),
                f"{tag}-{i}",
                i + 1,
                body[:size],
                compact=rng.random() < 0.2,
            )
        )
    return msgs


def test_ten_thousand_varied_messages_byte_for_byte(
    relay: RelayProcess, backend: SipBackend
) -> None:
    """10,000 messages over 8 connections: sizes up to 40 kB (several TLS records each), several
    coalesced per record, each byte arriving in order; every response comes back."""
    per_conn, nconn = 1250, 8
    errors: list[BaseException] = []
    sent: dict[int, list[bytes]] = {}

    def run(k: int) -> None:
        rng = random.Random(k)
        msgs = _varied_messages(rng, f"c{k}", per_conn)
        sent[k] = msgs
        try:
            with TlsClient(relay.port()) as client:
                i = 0
                while i < len(msgs):
                    batch = msgs[i : i + rng.choice([1, 1, 2, 5, 20])]
                    client.send(b"".join(batch))  # coalesced: several messages per write
                    i += len(batch)
                responses = client.recv_messages(len(msgs), timeout=60)
                assert [r.split(b"\r\n")[0] for r in responses] == [b"SIP/2.0 200 OK"] * len(msgs)
                assert responses == [response_to(m) for m in msgs]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(nconn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    conns = backend.wait_conns(nconn)
    got = sorted((c.messages for c in conns), key=lambda m: m[0])
    want = sorted(sent.values(), key=lambda m: m[0])
    assert sum(map(len, got)) == per_conn * nconn
    assert got == want


def test_message_split_across_many_records(relay: RelayProcess, backend: SipBackend) -> None:
    """A message cut into 3 TLS records (within tls_max_msg_chunks = 4) arrives whole."""
    req = request("INVITE", "split@t", body=b"v=0\r\n" * 200)
    with TlsClient(relay.port()) as client:
        third = len(req) // 3
        client.send_records([req[:third], req[third : 2 * third], req[2 * third :]])
        client.recv_messages(1)
    assert backend.wait_messages(1) == [req]


def test_backend_initiated_requests_reach_the_client(
    relay: RelayProcess, backend: SipBackend
) -> None:
    with TlsClient(relay.port()) as client:
        client.send(request("REGISTER", "reg@t"))
        client.recv_messages(1)
        invite = request("INVITE", "to-phone@t", body=b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n")
        big = request("MESSAGE", "big@t", body=b"x" * 30000)
        backend.send(0, invite + big)
        assert client.recv_messages(2) == [invite, big]
        client.send(response_to(invite))
    msgs = backend.wait_messages(2)
    assert msgs[1] == response_to(invite)


def test_each_client_gets_its_own_backend_connection(
    relay: RelayProcess, backend: SipBackend
) -> None:
    with TlsClient(relay.port()) as a, TlsClient(relay.port()) as b:
        a.send(request(call_id="a@t"))
        b.send(request(call_id="b@t"))
        a.recv_messages(1)
        b.recv_messages(1)
        conns = backend.wait_conns(2)
        backend.send(0, request("NOTIFY", "n0@t"))
        backend.send(1, request("NOTIFY", "n1@t"))
        got = {a.recv_messages(1)[0], b.recv_messages(1)[0]}
        assert got == {request("NOTIFY", "n0@t"), request("NOTIFY", "n1@t")}
        # each backend connection carries exactly one client's messages
        owners = {c.messages[0].split(b"Call-ID: ")[1].split(b"\r\n")[0] for c in conns[:2]}
        assert owners == {b"a@t", b"b@t"}


def test_client_close_closes_backend_after_flush(relay: RelayProcess, backend: SipBackend) -> None:
    backend.answer = False
    client = TlsClient(relay.port())
    msgs = [request("MESSAGE", f"f{i}@t", i + 1, b"x" * 1000) for i in range(50)]
    client.send(b"".join(msgs))
    client.close_notify()
    assert backend.wait_messages(50) == msgs
    assert backend.wait_closed(0)


def test_backend_close_closes_client_after_flush(relay: RelayProcess, backend: SipBackend) -> None:
    with TlsClient(relay.port()) as client:
        client.send(request(call_id="x@t"))
        client.recv_messages(1)
        last = request("BYE", "last@t")
        backend.send(0, last)
        backend.close_conn(0)
        assert client.recv_messages(1) == [last]
        assert client.wait_closed()
