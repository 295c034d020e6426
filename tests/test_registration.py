"""Registrations hold a connection open (tlstrace/sip/registration.py), in memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.support.sip import request
from tlstrace.sip.registration import MAX_EXPIRY, MAX_PENDING, RegistrationTracker


def register(
    cseq: int = 1,
    expires: str | None = "600",
    contact: str = "<sip:alice@10.0.0.1>",
    aor: str = "alice",
    call_id: str = "reg@x",
) -> bytes:
    headers = [f"Contact: {contact}"] if contact else []
    if expires is not None:
        headers.append(f"Expires: {expires}")
    req = request("REGISTER", call_id, cseq, uri="sip:example.com", headers=headers)
    return req.replace(b"To: <sip:bob@example.com>", f"To: <sip:{aor}@example.com>".encode())


def ok(req: bytes, *contacts: str, code: str = "200 OK", expires: str | None = None) -> bytes:
    head = req.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [
        h
        for h in head[1:]
        if h.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"i", b"cseq")
    ]
    extra = [f"Contact: {c}".encode() for c in contacts]
    if expires is not None:
        extra.append(f"Expires: {expires}".encode())
    return (
        b"\r\n".join([f"SIP/2.0 {code}".encode(), *keep, *extra, b"Content-Length: 0"])
        + b"\r\n\r\n"
    )


def test_the_granted_expiry_of_the_phones_own_contact() -> None:
    t = RegistrationTracker()
    req = register()
    t.request(req, 0.0)
    assert t.pending
    t.response(ok(req, code="100 Trying"), 10.0)
    assert t.pending and t.until == 0
    # other devices' bindings of the same AOR are listed too: only the phone's own counts
    t.response(
        ok(req, "<sip:alice@10.0.0.1>;expires=300", "<sip:alice@10.9.9.9>;expires=3000"), 10.0
    )
    assert not t.pending and t.until == 310.0


def test_compact_forms_and_several_contacts_in_one_header() -> None:
    t = RegistrationTracker()
    req = register(contact='"Alice, home" <sip:alice@10.0.0.1;transport=tls>')
    req = req.replace(b"Call-ID:", b"i:").replace(b"Contact:", b"m:")
    t.request(req, 0.0)
    t.response(
        ok(
            req,
            '<sip:bob@x>;expires=5, "Alice, home" '
            "<sip:alice@10.0.0.1;transport=tls>;q=0.5;EXPIRES=120",
        ),
        0.0,
    )
    assert t.until == 120.0


def test_failures_challenges_and_other_methods_change_nothing() -> None:
    t = RegistrationTracker()
    req = register()
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=600", code="401 Unauthorized"), 0.0)
    assert t.until == 0 and not t.pending
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=600").replace(b"REGISTER", b"INVITE"), 0.0)
    assert t.until == 0 and t.pending  # not the REGISTER's answer


def test_unregistering_ends_the_hold() -> None:
    t = RegistrationTracker()
    req = register()
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=600"), 0.0)
    assert t.until == 600.0
    bye = register(2, expires="0")
    t.request(bye, 0.0)
    t.response(ok(bye), 1.0)  # no binding left
    assert t.until == 0
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=60"), 2.0)
    star = register(3, expires="0", contact="*")
    t.request(star, 0.0)
    t.response(ok(star, "<sip:alice@10.0.0.1>;expires=60"), 3.0)
    assert t.until == 0


def test_an_expires_header_stands_for_contacts_without_the_parameter() -> None:
    t = RegistrationTracker()
    req = register()
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>", expires="900"), 0.0)
    assert t.until == 900.0


def test_two_lines_on_one_connection() -> None:
    t = RegistrationTracker()
    a, b = register(aor="alice", call_id="a"), register(aor="line2", call_id="b")
    t.request(a, 0.0)
    t.request(b, 0.0)
    t.response(ok(b, "<sip:alice@10.0.0.1>;expires=60"), 0.0)
    t.response(ok(a, "<sip:alice@10.0.0.1>;expires=3600"), 0.0)
    assert t.until == 3600.0
    a2 = register(2, expires="0", aor="alice", call_id="a")
    t.request(a2, 0.0)
    t.response(ok(a2), 10.0)
    assert t.until == 60.0  # line2 is still registered


def test_bounded_whatever_the_client_sends() -> None:
    t = RegistrationTracker()
    for i in range(10 * MAX_PENDING):
        t.request(register(i, call_id="c" * 60000 + str(i)), 0.0)
    assert len(t._pending) == MAX_PENDING
    req = register(1, call_id="big")
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=9999999999"), 0.0)
    assert t.until == MAX_EXPIRY


@given(st.binary(max_size=600))
def test_any_bytes_are_harmless(junk: bytes) -> None:
    t = RegistrationTracker()
    t.request(b"REGISTER sip:x SIP/2.0\r\n" + junk, 0.0)
    t.response(b"SIP/2.0 200 OK\r\n" + junk, 0.0)
    assert t.until >= 0


def test_registrars_add_parameters_to_the_contact() -> None:
    t = RegistrationTracker()
    req = register(contact="<sip:alice@10.0.0.1:5061;transport=tls>")
    t.request(req, 0.0)
    t.response(
        ok(
            req,
            "<sip:alice@10.0.0.1:5061;transport=tls;alias=127.0.0.1~4711~3>"
            ';expires=90;received="sip:1.2.3.4"',
            "<sip:alice@192.0.2.99>;expires=3000",
        ),
        0.0,
    )
    assert t.until == 90.0


def test_a_query_changes_nothing() -> None:
    t = RegistrationTracker()
    req = register()
    t.request(req, 0.0)
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=600"), 0.0)
    query = register(2, expires=None, contact="")
    t.request(query, 0.0)
    t.response(ok(query, "<sip:alice@10.0.0.1>;expires=500"), 100.0)
    assert t.until == 600.0


def test_odd_cseq_values_never_raise() -> None:
    t = RegistrationTracker()
    for cseq in (b"\x0b", b"\x0c", b"", b" ", b"REGISTER", b"1"):
        msg = register().replace(b"CSeq: 1 REGISTER", b"CSeq: " + cseq)
        t.request(msg, 0.0)
        t.response(ok(msg, "<sip:alice@10.0.0.1>;expires=60"), 0.0)


def test_unanswered_registers_are_forgotten() -> None:
    t = RegistrationTracker()
    t.request(register(1, call_id="lost"), 0.0)
    assert t.pending
    req = register(2, call_id="later")
    t.request(req, 100.0)  # the first one is long past Timer F
    assert len(t._pending) == 1
    t.response(ok(req, "<sip:alice@10.0.0.1>;expires=60"), 100.0)
    assert not t.pending and t.until == 160.0
