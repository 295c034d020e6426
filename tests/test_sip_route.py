"""tlstrace.sip.route: which local connection of a shared trunk a message from the peer goes to
(sans-IO: message bytes and a clock, no sockets)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlstrace.sip.route import TRANSACTION_TTL, Route, TrunkRoutes, peek


def req(
    method: str,
    call: str,
    cseq: int = 1,
    *,
    branch: str | None = None,
    via: str = "SIP/2.0/TCP 10.0.0.1:5060",
    from_tag: str = "lt",
    to_tag: str = "",
    compact: bool = False,
    cseq_method: str | None = None,
) -> bytes:
    branch = branch or f"z9hG4bK-{call}-{method}-{cseq}"
    to = f";tag={to_tag}" if to_tag else ""
    lines = [
        f"{method} sip:bob@example.com SIP/2.0",
        f"{'v' if compact else 'Via'}: {via};branch={branch};rport",
        "Max-Forwards: 70",
        f"{'f' if compact else 'From'}: <sip:a@example.com>;tag={from_tag}",
        f"{'t' if compact else 'To'}: <sip:b@example.com>{to}",
        f"{'i' if compact else 'Call-ID'}: {call}",
        f"CSeq: {cseq} {cseq_method or method}",
        f"{'l' if compact else 'Content-Length'}: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def resp(request: bytes, code: int, to_tag: str = "", *, received: bool = True) -> bytes:
    """A response as a peer builds it: the request's Via (with received/rport filled in),
    From, Call-ID and CSeq, and its own To tag."""
    head = request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    out = [f"SIP/2.0 {code} Whatever".encode()]
    for h in head:
        name = h.split(b":", 1)[0].strip().lower()
        if name in (b"via", b"v"):
            out.append(h.replace(b";rport", b";received=192.0.2.1;rport=40000") if received else h)
        elif name in (b"to", b"t"):
            out.append(h + f";tag={to_tag}".encode() if to_tag and b"tag=" not in h else h)
        elif name in (b"from", b"f", b"call-id", b"i", b"cseq"):
            out.append(h)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


# -- peek ------------------------------------------------------------------------------------


def test_peek_long_and_compact_forms() -> None:
    for compact in (False, True):
        p = peek(req("INVITE", "c1@h", 7, from_tag="ft", to_tag="tt", compact=compact))
        assert p is not None
        assert (
            p.method,
            p.status,
            p.branch,
            p.sent_by,
            p.call_id,
            p.cseq_num,
            p.cseq_method,
            p.from_tag,
            p.to_tag,
        ) == (
            b"INVITE",
            0,
            b"z9hG4bK-c1@h-INVITE-7",
            b"10.0.0.1:5060",
            b"c1@h",
            b"7",
            b"INVITE",
            b"ft",
            b"tt",
        )


def test_peek_takes_the_top_via_only() -> None:
    msg = (
        b"SIP/2.0 180 Ringing\r\n"
        b"via: SIP / 2.0 / TCP Host.Example:5070 ; branch = z9hG4bKtop , "
        b"SIP/2.0/UDP other;branch=z9hG4bKsecond\r\n"
        b"Via: SIP/2.0/TCP third;branch=z9hG4bKthird\r\n"
        b'FROM: "A;tag=no" <sip:a@x;tag=notthis>;tag=ft\r\n'
        b"t: sip:b@x;tag=tt\r\n"
        b"CALL-ID:   spaced@x  \r\n"
        b"cseq: 3   INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    p = peek(msg)
    assert p is not None
    assert (
        p.status,
        p.branch,
        p.sent_by,
        p.call_id,
        p.cseq_num,
        p.cseq_method,
        p.from_tag,
        p.to_tag,
    ) == (180, b"z9hG4bKtop", b"host.example:5070", b"spaced@x", b"3", b"INVITE", b"ft", b"tt")


def test_peek_needs_via_call_id_and_cseq() -> None:
    good = req("OPTIONS", "x")
    assert peek(good) is not None
    for header in (b"Via:", b"Call-ID:", b"CSeq:"):
        start = good.index(header)
        end = good.index(b"\r\n", start) + 2
        assert peek(good[:start] + good[end:]) is None
    assert peek(b"garbage") is None
    assert peek(b"SIP/2.0 abc Bad\r\nVia: x\r\n\r\n") is None


def test_peek_ignores_headers_in_the_body() -> None:
    body = b"Via: SIP/2.0/TCP evil;branch=z9hG4bKbody\r\nCall-ID: body\r\n"
    msg = (
        req("MESSAGE", "real@x").replace(
            b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
        )
        + body
    )
    p = peek(msg)
    assert p is not None and p.call_id == b"real@x" and p.branch.startswith(b"z9hG4bK-real")


_NAME_FORMS = {
    "via": ["Via", "v", "VIA", "vIa"],
    "from": ["From", "f", "FROM"],
    "to": ["To", "t", "TO"],
    "call-id": ["Call-ID", "i", "call-id", "CALL-Id"],
    "cseq": ["CSeq", "cseq", "CSEQ"],
}
_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    branch=_TOKEN,
    call_id=_TOKEN,
    ftag=_TOKEN,
    ttag=_TOKEN,
    num=st.integers(0, 2**31),
    method=st.sampled_from(["INVITE", "BYE", "CANCEL", "ACK", "OPTIONS", "SUBSCRIBE", "X-FOO"]),
    ws=st.sampled_from(["", " ", "\t", "  "]),
)
def test_peek_any_spelling(
    data: st.DataObject,
    branch: str,
    call_id: str,
    ftag: str,
    ttag: str,
    num: int,
    method: str,
    ws: str,
) -> None:
    """Whatever the header names' form and case, their order and the white space allowed
    around `:`, the routing facts come out the same."""

    def name(n: str) -> str:
        return str(data.draw(st.sampled_from(_NAME_FORMS[n])))

    headers = [
        f"{name('via')}{ws}:{ws}SIP/2.0/TLS 192.0.2.7:5061;branch=z9hG4bK{branch};rport",
        f"{name('from')}{ws}:{ws}<sip:a@x>;tag={ftag}",
        f'{name("to")}{ws}:{ws}"Bob" <sip:b@x>{ws};{ws}tag={ttag}',
        f"{name('call-id')}{ws}:{ws}{call_id}",
        f"{name('cseq')}{ws}:{ws}{num} {method}",
        "Max-Forwards: 70",
    ]
    headers = data.draw(st.permutations(headers))
    msg = (
        f"{method} sip:b@x SIP/2.0\r\n" + "\r\n".join(headers) + "\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    p = peek(msg)
    assert p is not None
    assert p.branch == f"z9hG4bK{branch}".encode()
    assert p.sent_by == b"192.0.2.7:5061"
    assert (p.call_id, p.from_tag, p.to_tag) == (call_id.encode(), ftag.encode(), ttag.encode())
    assert (p.cseq_num, p.cseq_method, p.method) == (
        str(num).encode(),
        method.encode(),
        method.encode(),
    )


# -- transactions ---------------------------------------------------------------------------


def test_responses_go_to_the_connection_that_sent_the_request() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    a, b = req("INVITE", "ca", from_tag="ta"), req("INVITE", "cb", from_tag="tb")
    r.from_local("A", a, 0.0)
    r.from_local("B", b, 0.1)
    for code in (100, 180, 200):
        assert r.to_local(resp(a, code, "pa"), 1.0)[:2] == (Route.TRANSACTION, "A")
        assert r.to_local(resp(b, code, "pb"), 1.0)[:2] == (Route.TRANSACTION, "B")


def test_same_branch_other_sent_by_or_method_is_another_transaction() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    a = req("INVITE", "c", branch="z9hG4bKsame", via="SIP/2.0/TCP 10.0.0.1:5060")
    b = req("INVITE", "c", branch="z9hG4bKsame", via="SIP/2.0/TCP 10.0.0.2:5060")
    r.from_local("A", a, 0)
    r.from_local("B", b, 0)
    assert r.to_local(resp(a, 200, "x"), 1)[1] == "A"
    assert r.to_local(resp(b, 200, "x"), 1)[1] == "B"
    # a CANCEL shares its INVITE's branch but is its own transaction (§9.1, §17.1.3): sent by
    # another connection (another worker), its 200 goes there; the INVITE's 487 does not
    inv = req("INVITE", "k", branch="z9hG4bKk", from_tag="t")
    cancel = req("CANCEL", "k", branch="z9hG4bKk", from_tag="t")
    r.from_local("A", inv, 0)
    r.from_local("B", cancel, 0)
    assert r.to_local(resp(cancel, 200), 1)[1] == "B"
    assert r.to_local(resp(inv, 487, "x"), 1)[1] == "A"


def test_rfc2543_branch_needs_call_id_and_cseq() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    a = req("OPTIONS", "c1", 1, branch="0")
    b = req("OPTIONS", "c2", 1, branch="0")
    r.from_local("A", a, 0)
    r.from_local("B", b, 0)
    assert r.to_local(resp(a, 200), 1)[1] == "A"
    assert r.to_local(resp(b, 200), 1)[1] == "B"


def test_transactions_expire_after_timer_b_and_final_retransmissions_are_covered() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    opt = req("OPTIONS", "o")
    r.from_local("A", opt, 0)
    assert r.to_local(resp(opt, 200), TRANSACTION_TTL - 1)[1] == "A"
    # the final response restarted the clock: its retransmission still matches
    assert r.to_local(resp(opt, 200), 2 * TRANSACTION_TTL - 2)[1] == "A"
    assert r.to_local(resp(opt, 200), 3 * TRANSACTION_TTL)[0] is Route.NONE
    r.from_local("A", req("OPTIONS", "p"), 100)
    r.expire(100 + TRANSACTION_TTL + 1)
    assert len(r.client) == 0 and r.client.bytes == 0


def test_a_call_that_rings_for_minutes_keeps_its_transactions() -> None:
    """INVITE transactions outlive Timer B while provisional responses come (Timer C): a
    final response or a CANCEL after minutes of ringing still finds its transaction."""
    r: TrunkRoutes[str] = TrunkRoutes()
    invite = req("INVITE", "ring", from_tag="l-ring")
    r.from_local("A", invite, 0)
    r.from_local("B", req("OPTIONS", "other"), 0.5)  # B sent last
    assert r.to_local(resp(invite, 100), 1)[:2] == (Route.TRANSACTION, "A")
    assert r.to_local(resp(invite, 100), 100)[:2] == (Route.TRANSACTION, "A")
    assert r.to_local(resp(invite, 486), 250)[:2] == (Route.TRANSACTION, "A")
    # the peer calls: the local side rings, the peer cancels two minutes later
    pinv = req(
        "INVITE", "in", via="SIP/2.0/TLS 203.0.113.5:5061", branch="z9hG4bKpeer-in", from_tag="p-in"
    )
    _, _, p = r.to_local(pinv, 0)
    assert p is not None
    r.delivered(p, "A", 0)
    r.from_local("A", resp(pinv, 100, received=False), 1)
    r.from_local("A", resp(pinv, 180, "l-in", received=False), 60)
    cancel = req(
        "CANCEL", "in", via="SIP/2.0/TLS 203.0.113.5:5061", branch="z9hG4bKpeer-in", from_tag="p-in"
    )
    assert r.to_local(cancel, 200)[:2] == (Route.PEER_TRANSACTION, "A")


# -- dialogs --------------------------------------------------------------------------------


def call(r: TrunkRoutes[str], conn: str, name: str, t: float = 0.0) -> tuple[bytes, bytes]:
    """A local connection places a call the peer answers; returns (INVITE, 200)."""
    invite = req("INVITE", name, from_tag=f"l-{name}")
    r.from_local(conn, invite, t)
    ok = resp(invite, 200, f"p-{name}")
    assert r.to_local(ok, t)[1] == conn
    r.from_local(conn, req("ACK", name, from_tag=f"l-{name}", to_tag=f"p-{name}"), t)
    return invite, ok


def peer_req(
    method: str, name: str, cseq: int = 1, *, ours: str = "", branch: str | None = None
) -> bytes:
    """A request from the peer in dialog `name`: its From tag is the peer's, To is ours."""
    return req(
        method,
        name,
        cseq,
        via="SIP/2.0/TLS 203.0.113.5:5061",
        branch=branch or f"z9hG4bKpeer-{name}-{method}-{cseq}",
        from_tag=f"p-{name}",
        to_tag=ours or f"l-{name}",
    )


def test_peer_requests_go_to_the_dialogs_connection() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    call(r, "A", "one")
    call(r, "B", "two")
    assert r.to_local(peer_req("BYE", "one", 2), 5)[:2] == (Route.DIALOG, "A")
    assert r.to_local(peer_req("INVITE", "two", 2), 5)[:2] == (Route.DIALOG, "B")
    # unknown dialog, and a request without a To tag: for the caller to decide
    assert r.to_local(peer_req("BYE", "three", 2), 5)[:2] == (Route.NONE, None)
    assert r.to_local(req("INVITE", "new"), 5)[:2] == (Route.NONE, None)


def test_in_dialog_request_from_another_connection_moves_the_dialog() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    call(r, "A", "d")
    r.from_local("B", req("INVITE", "d", 2, from_tag="l-d", to_tag="p-d"), 1)  # re-INVITE
    assert r.to_local(peer_req("BYE", "d", 2), 2)[1] == "B"


def test_bye_and_its_2xx_end_the_dialog_either_way() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    call(r, "A", "x")
    bye = req("BYE", "x", 2, from_tag="l-x", to_tag="p-x")
    r.from_local("A", bye, 1)
    assert len(r.dialogs) == 1
    assert r.to_local(resp(bye, 200), 1)[1] == "A"
    assert len(r.dialogs) == 0
    call(r, "A", "y")
    pbye = peer_req("BYE", "y", 2)
    assert r.to_local(pbye, 1)[1] == "A"
    r.from_local("A", resp(pbye, 200), 1)
    assert len(r.dialogs) == 0


def test_failed_invite_ends_its_early_dialog_only() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    invite = req("INVITE", "e", from_tag="l-e")
    r.from_local("A", invite, 0)
    r.to_local(resp(invite, 180, "p-e"), 0)
    assert len(r.dialogs) == 1  # early: the peer may send UPDATE or PRACK-related requests
    assert r.to_local(peer_req("UPDATE", "e", 5), 0)[1] == "A"
    r.to_local(resp(invite, 486, "p-e"), 0)
    assert len(r.dialogs) == 0
    # a failed re-INVITE leaves the confirmed dialog alone
    call(r, "A", "f")
    reinvite = req("INVITE", "f", 2, from_tag="l-f", to_tag="p-f")
    r.from_local("A", reinvite, 1)
    r.to_local(resp(reinvite, 491), 1)
    assert r.to_local(peer_req("BYE", "f", 3), 1)[1] == "A"


def test_late_2xx_retransmission_follows_the_dialog() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    _, ok = call(r, "A", "late")
    assert r.to_local(ok, 10 * TRANSACTION_TTL)[:2] == (Route.DIALOG, "A")


def test_dialogs_expire_when_idle() -> None:
    r: TrunkRoutes[str] = TrunkRoutes(dialog_idle=100)
    call(r, "A", "idle")
    assert r.to_local(peer_req("INFO", "idle", 2), 90)[1] == "A"  # used: clock restarts
    assert r.to_local(peer_req("INFO", "idle", 3), 180)[1] == "A"
    assert r.to_local(peer_req("BYE", "idle", 4), 281)[0] is Route.NONE


def test_peer_initiated_dialog_learnt_from_the_local_answer() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    invite = req("INVITE", "in", via="SIP/2.0/TLS 203.0.113.5:5061", from_tag="p-in")
    route, conn, p = r.to_local(invite, 0)
    assert route is Route.NONE and conn is None and p is not None
    r.delivered(p, "T", 0)  # the relay gave it to its local target
    # a retransmission, the CANCEL and a non-2xx ACK follow the INVITE (§17.2.3, §9.2)
    assert r.to_local(invite, 0.5)[:2] == (Route.PEER_TRANSACTION, "T")
    cancel = req(
        "CANCEL",
        "in",
        via="SIP/2.0/TLS 203.0.113.5:5061",
        from_tag="p-in",
        branch="z9hG4bK-in-INVITE-1",
    )
    assert r.to_local(cancel, 1)[:2] == (Route.PEER_TRANSACTION, "T")
    r.from_local("T", resp(invite, 200, "l-in"), 1)
    assert r.to_local(peer_req("BYE", "in", 2), 2)[:2] == (Route.DIALOG, "T")


def test_closed_connection_is_forgotten() -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    call(r, "A", "a")
    call(r, "B", "b")
    pending = req("OPTIONS", "pending")
    r.from_local("A", pending, 1)
    r.forget("A")
    assert r.to_local(resp(pending, 200), 1)[0] is Route.NONE
    assert r.to_local(peer_req("BYE", "a", 2), 1)[0] is Route.NONE
    assert r.to_local(peer_req("BYE", "b", 2), 1)[1] == "B"
    assert "A" not in r.client.by_conn and "A" not in r.dialogs.by_conn
    r.forget("B")
    assert all(len(t) == 0 and t.bytes == 0 and not t.by_conn for t in r.tables)


def test_tables_are_bounded_in_entries_and_bytes() -> None:
    r: TrunkRoutes[str] = TrunkRoutes(max_transactions=100, max_bytes=200_000)
    for i in range(1000):
        r.from_local("A", req("OPTIONS", f"n{i}"), 0)
    assert len(r.client) == 100 and r.client.evicted == 900
    # the newest are kept: the oldest go first
    assert r.to_local(resp(req("OPTIONS", "n999"), 200), 0)[1] == "A"
    assert r.to_local(resp(req("OPTIONS", "n0"), 200), 0)[0] is Route.NONE
    big: TrunkRoutes[str] = TrunkRoutes(max_bytes=100_000)
    for i in range(100):
        big.from_local("A", req("OPTIONS", f"{i}-" + "x" * 20_000), 0)
    assert big.client.bytes <= 100_000 and len(big.client) <= 2
    # one entry larger than the whole bound is not kept at all
    big.from_local("A", req("OPTIONS", "y" * 200_000), 0)
    assert big.client.bytes <= 100_000


def test_a_peer_flooding_requests_cannot_push_out_local_transactions() -> None:
    r: TrunkRoutes[str] = TrunkRoutes(max_transactions=50)
    mine = req("INVITE", "mine")
    r.from_local("A", mine, 0)
    for i in range(1000):
        _, _, p = r.to_local(req("OPTIONS", f"flood{i}", via="SIP/2.0/TLS 203.0.113.5"), 0)
        assert p is not None
        r.delivered(p, "T", 0)
    assert len(r.server) == 50
    assert r.to_local(resp(mine, 200, "x"), 0)[1] == "A"


@settings(max_examples=60, deadline=None)
@given(conns=st.integers(2, 8), calls=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_interleaved_calls_every_message_reaches_its_connection(
    conns: int, calls: int, seed: int
) -> None:
    """Many connections' calls (INVITE/100/180/200/ACK, BYE from either side), in any
    interleaving: every response and every in-dialog request from the peer reaches the
    connection of its call, and the tables are empty once all calls ended and closed."""
    rnd = random.Random(seed)
    r: TrunkRoutes[int] = TrunkRoutes()
    steps: list[list[tuple[str, int, str]]] = []
    for c in range(conns):
        for k in range(calls):
            name = f"{c}-{k}"
            side = "peer" if rnd.random() < 0.5 else "local"
            steps.append(
                [
                    ("invite", c, name),
                    ("100", c, name),
                    ("180", c, name),
                    ("200", c, name),
                    ("ack", c, name),
                    (f"bye-{side}", c, name),
                    (f"bye-{side}-200", c, name),
                ]
            )
    t = 0.0
    while steps:
        seq = rnd.choice(steps)
        kind, c, name = seq.pop(0)
        if not seq:
            steps.remove(seq)
        t += 0.001
        invite = req("INVITE", name, via=f"SIP/2.0/TCP 10.0.0.{c}:5060", from_tag=f"l-{name}")
        bye = req(
            "BYE",
            name,
            2,
            via=f"SIP/2.0/TCP 10.0.0.{c}:5060",
            from_tag=f"l-{name}",
            to_tag=f"p-{name}",
        )
        pbye = peer_req("BYE", name, 2)
        if kind == "invite":
            r.from_local(c, invite, t)
        elif kind in ("100", "180", "200"):
            code = int(kind)
            assert r.to_local(resp(invite, code, "" if code == 100 else f"p-{name}"), t)[1] == c
        elif kind == "ack":
            r.from_local(
                c,
                req(
                    "ACK",
                    name,
                    via=f"SIP/2.0/TCP 10.0.0.{c}:5060",
                    branch=f"z9hG4bK-ack-{name}",
                    from_tag=f"l-{name}",
                    to_tag=f"p-{name}",
                ),
                t,
            )
        elif kind == "bye-local":
            r.from_local(c, bye, t)
        elif kind == "bye-local-200":
            assert r.to_local(resp(bye, 200), t)[1] == c
        elif kind == "bye-peer":
            route, conn, p = r.to_local(pbye, t)
            assert (route, conn) == (Route.DIALOG, c)
            assert p is not None
            r.delivered(p, c, t)
        else:
            r.from_local(c, resp(pbye, 200), t)
    assert len(r.dialogs) == 0
    for c in range(conns):
        r.forget(c)
    assert all(len(tb) == 0 and tb.bytes == 0 for tb in r.tables)


@pytest.mark.parametrize("compact", [False, True])
def test_compact_forms_route_the_same(compact: bool) -> None:
    r: TrunkRoutes[str] = TrunkRoutes()
    invite = req("INVITE", "cf", from_tag="l-cf", compact=compact)
    r.from_local("A", invite, 0)
    r.from_local("B", req("OPTIONS", "other"), 0)
    assert r.to_local(resp(invite, 200, "p-cf"), 0)[1] == "A"
    bye = req(
        "BYE",
        "cf",
        2,
        via="SIP/2.0/TLS 203.0.113.5",
        from_tag="p-cf",
        to_tag="l-cf",
        compact=not compact,
    )
    assert r.to_local(bye, 0)[1] == "A"


_PIECES = [
    b"INVITE sip:x SIP/2.0",
    b"SIP/2.0 200 OK",
    b"SIP/2.0 ",
    b"\r\n",
    b"Via:",
    b"v: ",
    b"SIP/2.0/TCP h:1",
    b";branch=z9hG4bK",
    b";tag=",
    b"Call-ID: ",
    b"i:",
    b"CSeq: 1 ",
    b"From: ",
    b"t:",
    b"To:",
    b"<",
    b">",
    b",",
    b" ",
    b"\t",
    b";",
    b"=",
    b"\r\n\r\n",
    b"\x00",
    b"\xff",
]


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=8)), max_size=40))
def test_any_bytes_are_safe(parts: list[bytes]) -> None:
    """Whatever arrives (the framer only checks the length on the local side), routing never
    raises, and a closed connection leaves nothing behind."""
    data = b"".join(parts)
    peek(data)
    r: TrunkRoutes[str] = TrunkRoutes()
    r.from_local("A", data, 0)
    _, conn, _ = r.to_local(data, 1)
    assert conn in (None, "A")
    r.forget("A")
    assert all(len(t) == 0 and t.bytes == 0 for t in r.tables)


@settings(max_examples=60, deadline=None)
@given(conns=st.integers(2, 8), calls=st.integers(1, 10), seed=st.integers(0, 2**32))
def test_interleaved_peer_initiated_calls(conns: int, calls: int, seed: int) -> None:
    """Calls the peer places (each given to one local connection, as local_target would be),
    answered by that connection with its own To tag, interleaved with a retransmission and
    calls other connections answer: the ACK, a re-INVITE and the BYE reach the answering
    connection, and the dialog ends with the BYE's 200."""
    rnd = random.Random(seed)
    r: TrunkRoutes[int] = TrunkRoutes()
    steps: list[list[tuple[str, int, str]]] = []
    for c in range(conns):
        for k in range(calls):
            name = f"in-{c}-{k}"
            steps.append(
                [
                    (s, c, name)
                    for s in (
                        "invite",
                        "retransmit",
                        "180",
                        "200",
                        "ack",
                        "reinvite",
                        "bye",
                        "bye-200",
                    )
                ]
            )
    t = 0.0
    while steps:
        seq = rnd.choice(steps)
        kind, c, name = seq.pop(0)
        if not seq:
            steps.remove(seq)
        t += 0.001
        via = "SIP/2.0/TLS 203.0.113.5:5061"
        invite = req("INVITE", name, via=via, from_tag=f"p-{name}")
        if kind == "invite":
            route, conn, p = r.to_local(invite, t)
            assert (route, conn) == (Route.NONE, None) and p is not None
            r.delivered(p, c, t)
        elif kind == "retransmit":
            assert r.to_local(invite, t)[:2] == (Route.PEER_TRANSACTION, c)
        elif kind in ("180", "200"):
            r.from_local(c, resp(invite, int(kind), f"l-{name}"), t)
        else:
            method, cseq = {
                "ack": ("ACK", 1),
                "reinvite": ("INVITE", 2),
                "bye": ("BYE", 3),
                "bye-200": ("BYE", 3),
            }[kind]
            msg = req(
                method,
                name,
                cseq,
                via=via,
                branch=f"z9hG4bK-{name}-{kind}",
                from_tag=f"p-{name}",
                to_tag=f"l-{name}",
            )
            if kind == "bye-200":
                r.from_local(c, resp(msg.replace(b"-bye-200", b"-bye"), 200), t)
                continue
            assert r.to_local(msg, t)[1] == c
    assert len(r.dialogs) == 0
