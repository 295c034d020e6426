"""Registrations carried by one connection, sans-IO: until when the SIP server keeps the phone's
bindings, so that the relay does not close the connection it would send the phone's calls over.

A phone that registers over TLS every 600 s (or every hour) without keep-alives is idle for
longer than `tcp_connection_lifetime`; closing its connection then makes the SIP server's
calls to it fail (Kamailio answers 477: the connection of the binding is gone). The relay
therefore notes each REGISTER the client sends (`request`) and reads the expiry the SIP server
granted in the 2xx (`response`): per RFC 3261 §10.2.4 and §10.3 the 2xx lists every current
binding of the address-of-record in Contact headers, each with its `expires` parameter; the
phone's own are the Contacts it sent (compared without URI parameters, which registrars add;
a 2xx that lists one binding lists the phone's). A REGISTER that removes the bindings (`Expires: 0`,
`Contact: *`) or a 2xx that lists none of the phone's Contacts ends the hold for that
address-of-record.

Everything here is bounded, since a client controls what it sends: at most `MAX_PENDING`
REGISTER transactions and `MAX_BINDINGS` addresses-of-record per connection, each held as a
few integers (hashes, not the bytes), and a granted expiry is capped at `MAX_EXPIRY`.
"""

from __future__ import annotations

import re

#: REGISTER transactions awaiting their final answer, per connection (the oldest is forgotten)
MAX_PENDING = 8
#: addresses-of-record tracked per connection (the one expiring first is forgotten)
MAX_BINDINGS = 16
#: Contacts of one REGISTER that are remembered
MAX_CONTACTS = 8
#: seconds: the longest registration that holds a connection open (24 h)
MAX_EXPIRY = 86400.0
#: seconds a REGISTER waits for its final answer before it is forgotten (RFC 3261 Timer F)
TRANSACTION_SECONDS = 32.0

_HEADER = re.compile(
    rb"\r\n(call-id|i|cseq|contact|m|expires|to|t)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE
)
_EXPIRES_PARAM = re.compile(rb";[ \t]*expires[ \t]*=[ \t]*([0-9]{1,10})", re.IGNORECASE)
_ONE_CONTACT = re.compile(rb'(?:[^,"<]|"[^"]*"?|<[^>]*>?)+')
_CANONICAL = {b"i": b"call-id", b"m": b"contact", b"t": b"to"}


class _Headers:
    """The few headers this module reads, from the header section of one message."""

    __slots__ = ("call_id", "contacts", "cseq", "expires", "to")

    def __init__(self, message: bytes) -> None:
        end = message.find(b"\r\n\r\n")
        self.call_id = b""
        self.cseq = b""
        self.to = b""
        self.expires: int | None = None
        #: (hash of the URI, its expires parameter), or (0, None) for "*"
        self.contacts: list[tuple[int, int | None]] = []
        for m in _HEADER.finditer(message, 0, end + 2 if end >= 0 else len(message)):
            name = m.group(1).lower()
            name = _CANONICAL.get(name, name)
            value = m.group(2).strip(b" \t")
            if name == b"contact":
                if len(self.contacts) < MAX_CONTACTS * 4:
                    self.contacts.extend(_contacts(value))
            elif name == b"expires":
                self.expires = int(value) if value.isdigit() and len(value) <= 10 else None
            elif name == b"call-id":
                self.call_id = value
            elif name == b"cseq":
                self.cseq = value
            else:  # to
                self.to = value

    def aor(self) -> int:
        """A hash of the To URI (the address-of-record of a REGISTER)."""
        uri = _uri(self.to)
        return hash(uri.lower())


def _uri(value: bytes) -> bytes:
    start = value.find(b"<")
    if start >= 0:
        end = value.find(b">", start)
        return value[start + 1 : end if end > 0 else len(value)]
    semi = value.find(b";")
    return value if semi < 0 else value[:semi]


def _contacts(value: bytes) -> list[tuple[int, int | None]]:
    """(URI hash, expires) of each contact in one Contact header value (comma-separated;
    commas inside <...> or quotes do not split)."""
    return [c for c in map(_contact, _ONE_CONTACT.findall(value)) if c[0] != -1]


def _contact(text: bytes) -> tuple[int, int | None]:
    text = text.strip(b" \t")
    if not text:
        return -1, None
    if text == b"*":
        return 0, None
    uri = _uri(text)
    close = text.find(b">")
    params = text[close + 1 :] if close >= 0 else text[len(uri) :]
    m = _EXPIRES_PARAM.search(params)
    return hash(_device(uri)), int(m.group(1)) if m else None


def _device(uri: bytes) -> bytes:
    """A contact URI without its parameters and headers, in lower case: registrars add
    parameters to the stored binding (Kamailio's `set_contact_alias()` adds `;alias=...`)."""
    end = len(uri)
    for sep in (b";", b"?"):
        i = uri.find(sep)
        if 0 <= i < end:
            end = i
    return uri[:end].lower()


class RegistrationTracker:
    """The registrations of one connection. `until` is the time (the caller's clock) up to
    which the SIP server keeps at least one of this connection's bindings, 0 when none."""

    __slots__ = ("_bindings", "_pending", "pending", "until")

    def __init__(self) -> None:
        #: (Call-ID, CSeq) hash -> (address-of-record hash, contact URI hashes, removes all,
        #: when the REGISTER was sent)
        self._pending: dict[int, tuple[int, frozenset[int], bool, float]] = {}
        #: address-of-record hash -> expiry time
        self._bindings: dict[int, float] = {}
        self.until = 0.0
        #: a REGISTER awaits its final answer (only then are responses worth a look)
        self.pending = False

    def request(self, message: bytes, now: float) -> None:
        """A REGISTER request the client sent on this connection."""
        h = _Headers(message)
        number = h.cseq.split(None, 1)
        if not h.call_id or not number:
            return
        removes_all = any(uri == 0 for uri, _ in h.contacts) or (
            h.expires == 0 and all(exp in (None, 0) for _, exp in h.contacts)
        )
        contacts = frozenset(uri for uri, _ in h.contacts[:MAX_CONTACTS] if uri)
        key = hash((h.call_id, number[0]))
        pending = self._pending
        pending.pop(key, None)
        # a REGISTER not answered within a transaction's lifetime (Timer F) never will be
        for old in [k for k, v in pending.items() if now - v[3] > TRANSACTION_SECONDS]:
            del pending[old]
        if len(pending) >= MAX_PENDING:
            del pending[next(iter(pending))]
        pending[key] = (h.aor(), contacts, removes_all, now)
        self.pending = True

    def response(self, message: bytes, now: float) -> None:
        """A response going to the client on this connection (call only while `pending`)."""
        code = message[8:11]
        if code[:1] == b"1" or not code.isdigit() or b"REGISTER" not in message:
            return
        h = _Headers(message)
        parts = h.cseq.split()
        if len(parts) != 2 or parts[1].upper() != b"REGISTER":
            return
        entry = self._pending.pop(hash((h.call_id, parts[0])), None)
        self.pending = bool(self._pending)
        if entry is None or code[:1] != b"2":
            return
        aor, contacts, removes_all, _ = entry
        if not contacts and not removes_all:
            return  # a query (no Contact): the bindings stay as they are
        granted: int | None = None
        if not removes_all:
            listed = [(uri, exp) for uri, exp in h.contacts if uri]
            if len(listed) == 1:
                listed[0] = (next(iter(contacts), 0), listed[0][1])  # it can only be ours
            mine = [exp if exp is not None else h.expires for uri, exp in listed if uri in contacts]
            known = [e for e in mine if e is not None]
            granted = max(known) if known else None
        if granted:
            self._bindings[aor] = now + min(float(granted), MAX_EXPIRY)
            if len(self._bindings) > MAX_BINDINGS:
                del self._bindings[min(self._bindings, key=self._bindings.__getitem__)]
        else:
            self._bindings.pop(aor, None)
        self.until = max(self._bindings.values(), default=0.0)
