"""Which local connection a message from a trunk's peer belongs to, sans-IO.

Several local connections (one per SIP server worker) share one pooled TLS connection to a
peer. `TrunkRoutes` learns from what each local connection sends, and tells where each message
from the peer goes:

- a **response** goes to the local connection that sent its request: the client transaction
  is matched as RFC 3261 §17.1.3 says, by the top Via's branch and the CSeq method (so a
  CANCEL and the INVITE it cancels are two transactions), with the Via's sent-by too; a branch
  without the `z9hG4bK` cookie (RFC 2543) also needs Call-ID, CSeq number and From tag to
  match. A response whose transaction is gone but whose dialog is known (a 2xx retransmitted
  late) goes to the dialog's connection.
- a **request** that belongs to a request the peer sent before (a retransmission; a CANCEL or
  a non-2xx ACK, matched to their INVITE as §17.2.3 and §9.2 say) goes where that one went;
  an in-dialog request (Call-ID and the local side's tag, which is the To tag of a request
  from the peer) goes to the dialog's local connection.
- anything else is `Route.NONE`: the caller decides (a configured local target, the most
  recent sender, or drop).

Dialogs are learnt from what went out and came back: a 1xx/2xx with a To tag to a
dialog-creating request a local connection sent (dialog: Call-ID and its From tag), a 1xx/2xx
with a To tag a local connection sent to such a request from the peer (Call-ID and its To tag),
and any in-dialog request a local connection sends (which makes it the dialog's connection).
A 2xx to a BYE ends the dialog; a failed INVITE ends the early dialog it made.

Every table is bounded in entries and bytes (the oldest entry goes first) and expires:
transactions 32 s (64*T1: Timer B/F) after their last message, dialogs after `dialog_idle`
seconds without one. `forget(conn)` drops a closed connection's entries at once.

Only the start line, the top Via, Call-ID, CSeq and the From and To tags are looked at (long
or compact names), found in one regular-expression scan of the header section.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

#: RFC 3261 branch cookie
MAGIC = b"z9hG4bK"
#: Timer B / Timer F: 64*T1 (T1 = 500 ms)
TRANSACTION_TTL = 32.0
#: seconds an INVITE transaction lives after its last provisional or final response: a call
#: may ring for minutes (RFC 3261 Timer C: more than 3 minutes), and its CANCEL, final
#: response and ACK must still find their connection
INVITE_TTL = 181.0
#: what an entry costs beyond its key bytes (dict slot, entry object, key tuple, index slot)
ENTRY_OVERHEAD = 440
#: methods whose request without a To tag can create a dialog (RFC 3261, 6665, 3515)
DIALOG_CREATING = frozenset({b"INVITE", b"SUBSCRIBE", b"REFER"})

_HEADER = re.compile(
    rb"\r\n(via|call-id|cseq|from|to|[vift])[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE
)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_VIA, _CALL_ID, _CSEQ, _FROM, _TO = range(5)
_NAMES = {
    b"via": _VIA,
    b"v": _VIA,
    b"call-id": _CALL_ID,
    b"i": _CALL_ID,
    b"cseq": _CSEQ,
    b"from": _FROM,
    b"f": _FROM,
    b"to": _TO,
    b"t": _TO,
}
_NAMES.update({k.upper(): v for k, v in list(_NAMES.items())})
_NAMES.update(
    {
        b"Via": _VIA,
        b"Call-ID": _CALL_ID,
        b"Call-Id": _CALL_ID,
        b"CSeq": _CSEQ,
        b"From": _FROM,
        b"To": _TO,
    }
)
#: "SIP/2.0/TCP host:port": the sent-by after the protocol and transport
_SENT_BY = re.compile(
    rb"[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*[A-Za-z0-9-]+[ \t]+([^;,]*)", re.IGNORECASE
)


@dataclass(slots=True)
class Peek:
    """What routing needs of one SIP message."""

    #: request method (b"" for a response)
    method: bytes
    #: response status code (0 for a request)
    status: int
    branch: bytes
    #: sent-by of the top Via, lower case, without white space
    sent_by: bytes
    call_id: bytes
    cseq_num: bytes
    cseq_method: bytes
    from_tag: bytes
    to_tag: bytes


def _tag(value: bytes) -> bytes:
    # the tag is a header parameter: after the name-addr's ">" when there is one
    close = value.rfind(b">")
    m = _TAG.search(value, close + 1 if close >= 0 else 0)
    return m.group(1) if m else b""


def _via(value: bytes) -> tuple[bytes, bytes]:
    """(branch, sent-by) of the first via-parm in a Via header value."""
    end = value.find(b",")
    if end < 0:
        end = len(value)
    m = _BRANCH.search(value, 0, end)
    branch = m.group(1) if m else b""
    m = _SENT_BY.match(value, 0, end)
    if m is None:
        return branch, b""
    sent_by = m.group(1).rstrip(b" \t")
    if b" " in sent_by or b"\t" in sent_by:
        sent_by = sent_by.replace(b" ", b"").replace(b"\t", b"")
    return branch, sent_by.lower()


def peek(data: bytes) -> Peek | None:
    """The routing facts of one framed SIP message; None when it lacks a Via, Call-ID or CSeq
    (or a start line): such a message matches nothing."""
    line_end = data.find(b"\r\n")
    if line_end <= 0:
        return None
    head_end = data.find(b"\r\n\r\n", line_end)
    if head_end < 0:
        head_end = len(data)
    if data.startswith(b"SIP/2.0 "):
        code = data[8:11]
        if not code.isdigit():
            return None
        method, status = b"", int(code)
    else:
        space = data.find(b" ", 0, line_end)
        if space <= 0:
            return None
        method, status = data[:space], 0
    via = call_id = cseq = from_ = to = None
    for name, value in _HEADER.findall(data, line_end, head_end + 2):
        kind = _NAMES.get(name)
        if kind is None:
            kind = _NAMES[name.lower()]
        if kind == _VIA:
            if via is None:
                via = value
        elif kind == _CALL_ID:
            if call_id is None:
                call_id = value
        elif kind == _CSEQ:
            if cseq is None:
                cseq = value
        elif kind == _FROM:
            if from_ is None:
                from_ = value
        elif to is None:
            to = value
    if via is None or call_id is None or cseq is None:
        return None
    branch, sent_by = _via(via)
    parts = cseq.split()
    if len(parts) != 2:
        return None
    return Peek(
        method,
        status,
        branch,
        sent_by,
        call_id.strip(),
        parts[0],
        parts[1],
        _tag(from_) if from_ is not None else b"",
        _tag(to) if to is not None else b"",
    )


def transaction_key(p: Peek, method: bytes) -> tuple[bytes, ...]:
    """The key of the transaction a message belongs to, for `method` (the request's, or the
    INVITE's for a CANCEL or ACK looking for its INVITE)."""
    if p.branch.startswith(MAGIC):
        return (p.branch, p.sent_by, method)
    # RFC 2543: the branch is not unique; Call-ID, CSeq number and From tag are needed too
    return (p.branch, p.sent_by, method, p.call_id, p.cseq_num, p.from_tag)


K = TypeVar("K", bound=Hashable)


class Route(StrEnum):
    """How the destination of a message from the peer was found."""

    TRANSACTION = "transaction"
    PEER_TRANSACTION = "peer_transaction"
    DIALOG = "dialog"
    NONE = "none"


class Entry(Generic[K]):
    __slots__ = ("call_id", "confirmed", "conn", "cost", "creating", "expires", "tag")

    def __init__(
        self,
        conn: K,
        call_id: bytes = b"",
        tag: bytes = b"",
        *,
        creating: bool = False,
        confirmed: bool = False,
    ) -> None:
        self.conn = conn
        self.call_id = call_id
        #: the local side's tag of the dialog
        self.tag = tag
        self.creating = creating
        self.confirmed = confirmed
        self.expires = 0.0
        self.cost = 0


class Table(Generic[K]):
    """Entries by key, in expiry order (every entry lives `ttl` seconds after its last use,
    so moving a used entry to the end keeps the order), bounded in count and bytes."""

    def __init__(self, name: str, *, ttl: float, max_entries: int, max_bytes: int) -> None:
        self.name = name
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[bytes, ...], Entry[K]] = OrderedDict()
        self.by_conn: dict[K, set[tuple[bytes, ...]]] = {}
        self.bytes = 0
        #: entries pushed out by the bounds before they expired
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: tuple[bytes, ...], now: float) -> Entry[K] | None:
        entry = self.entries.get(key)
        if entry is not None and entry.expires <= now:
            self.pop(key)
            return None
        return entry

    def touch(self, key: tuple[bytes, ...], entry: Entry[K], now: float) -> None:
        entry.expires = now + self.ttl
        self.entries.move_to_end(key)

    def put(self, key: tuple[bytes, ...], entry: Entry[K], now: float) -> None:
        self.pop(key)
        entry.cost = ENTRY_OVERHEAD + sum(map(len, key)) + len(entry.call_id) + len(entry.tag)
        if entry.cost > self.max_bytes:
            self.evicted += 1
            return
        self.expire(now)
        while self.entries and (
            len(self.entries) >= self.max_entries or self.bytes + entry.cost > self.max_bytes
        ):
            self.pop(next(iter(self.entries)))
            self.evicted += 1
        entry.expires = now + self.ttl
        self.entries[key] = entry
        self.bytes += entry.cost
        keys = self.by_conn.get(entry.conn)
        if keys is None:
            keys = self.by_conn[entry.conn] = set()
        keys.add(key)

    def pop(self, key: tuple[bytes, ...]) -> Entry[K] | None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return None
        self.bytes -= entry.cost
        keys = self.by_conn.get(entry.conn)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_conn[entry.conn]
        return entry

    def move(self, key: tuple[bytes, ...], entry: Entry[K], conn: K) -> None:
        """Give an entry to another connection."""
        if entry.conn == conn:
            return
        keys = self.by_conn.get(entry.conn)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_conn[entry.conn]
        entry.conn = conn
        self.by_conn.setdefault(conn, set()).add(key)

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries:
            key = next(iter(entries))
            if entries[key].expires > now:
                break
            self.pop(key)

    def forget(self, conn: K) -> None:
        for key in self.by_conn.pop(conn, ()):
            entry = self.entries.pop(key)
            self.bytes -= entry.cost


class TrunkRoutes(Generic[K]):
    """The transaction and dialog tables of one trunk (one pooled peer destination)."""

    def __init__(
        self,
        *,
        max_transactions: int = 32768,
        max_dialogs: int = 32768,
        max_bytes: int = 16 << 20,
        dialog_idle: float = 3600.0,
    ) -> None:
        #: requests local connections sent, waiting for the peer's responses
        self.client: Table[K] = Table(
            "transactions", ttl=TRANSACTION_TTL, max_entries=max_transactions, max_bytes=max_bytes
        )
        self.client_invite: Table[K] = Table(
            "transactions", ttl=INVITE_TTL, max_entries=max_transactions, max_bytes=max_bytes
        )
        #: requests the peer sent, by the local connection they were given to
        self.server: Table[K] = Table(
            "peer_transactions",
            ttl=TRANSACTION_TTL,
            max_entries=max_transactions,
            max_bytes=max_bytes,
        )
        self.server_invite: Table[K] = Table(
            "peer_transactions", ttl=INVITE_TTL, max_entries=max_transactions, max_bytes=max_bytes
        )
        #: dialogs by (Call-ID, the local side's tag)
        self.dialogs: Table[K] = Table(
            "dialogs", ttl=dialog_idle, max_entries=max_dialogs, max_bytes=max_bytes
        )

    @property
    def tables(self) -> tuple[Table[K], ...]:
        return self.client, self.client_invite, self.server, self.server_invite, self.dialogs

    def _client(self, method: bytes) -> Table[K]:
        return self.client_invite if method == b"INVITE" else self.client

    def _server(self, method: bytes) -> Table[K]:
        return self.server_invite if method == b"INVITE" else self.server

    # -- what local connections send -----------------------------------------------------------

    def from_local(self, conn: K, data: bytes, now: float) -> None:
        """Learn from one message a local connection sends to the peer."""
        p = peek(data)
        if p is None:
            return
        if p.method:
            if p.method == b"ACK":
                if p.to_tag:  # the ACK of a 2xx: in the dialog
                    self._dialog_used(conn, p.call_id, p.from_tag, now)
                return  # a non-2xx ACK gets no response
            creating = not p.to_tag and p.method in DIALOG_CREATING
            self._client(p.method).put(
                transaction_key(p, p.method),
                Entry(conn, p.call_id, p.from_tag, creating=creating),
                now,
            )
            if p.to_tag:
                self._dialog_used(conn, p.call_id, p.from_tag, now)
            return
        # a response to a request from the peer: its transaction lives on (a call ringing
        # for minutes); the local side's tag is the To tag
        status = p.status
        server = self._server(p.cseq_method)
        skey = transaction_key(p, p.cseq_method)
        sentry = server.get(skey, now)
        if sentry is not None:
            server.touch(skey, sentry, now)
        if not p.to_tag:
            return
        key = (p.call_id, p.to_tag)
        if p.cseq_method == b"BYE":
            if 200 <= status < 300:
                self.dialogs.pop(key)
        elif p.cseq_method in DIALOG_CREATING:
            if 100 < status < 300:
                self._dialog_learnt(conn, p.call_id, p.to_tag, status >= 200, now)
            elif status >= 300:
                self._early_dialog_failed(key)

    # -- what the peer sends -------------------------------------------------------------------

    def to_local(self, data: bytes, now: float) -> tuple[Route, K | None, Peek | None]:
        """Where one message from the peer goes, and how that was found."""
        p = peek(data)
        if p is None:
            return Route.NONE, None, None
        if p.status:
            return self._response(p, now)
        method = b"INVITE" if p.method in (b"ACK", b"CANCEL") else p.method
        key = transaction_key(p, method)
        server = self._server(method)
        entry = server.get(key, now)
        if entry is not None:
            server.touch(key, entry, now)
            return Route.PEER_TRANSACTION, entry.conn, p
        if p.to_tag:
            dkey = (p.call_id, p.to_tag)
            d = self.dialogs.get(dkey, now)
            if d is not None:
                self.dialogs.touch(dkey, d, now)
                return Route.DIALOG, d.conn, p
        return Route.NONE, None, p

    def delivered(self, p: Peek, conn: K, now: float) -> None:
        """A request from the peer was given to `conn`: its retransmissions, and the CANCEL
        and ACK of an INVITE, go there too."""
        if not p.method or p.method == b"ACK":
            return
        key = transaction_key(p, p.method)
        server = self._server(p.method)
        entry = server.get(key, now)
        if entry is not None and entry.conn == conn:
            server.touch(key, entry, now)
        else:
            server.put(key, Entry(conn), now)

    def _response(self, p: Peek, now: float) -> tuple[Route, K | None, Peek | None]:
        key = transaction_key(p, p.cseq_method)
        client = self._client(p.cseq_method)
        entry = client.get(key, now)
        status = p.status
        if entry is None:
            # a 2xx retransmitted after its transaction ended still belongs to its dialog
            d = self.dialogs.get((p.call_id, p.from_tag), now) if p.from_tag else None
            if d is not None:
                return Route.DIALOG, d.conn, p
            return Route.NONE, None, p
        if status >= 200 or client is self.client_invite:
            # the final response: its retransmissions may follow for a while; a provisional
            # one to an INVITE: the call is ringing, its final response may take minutes
            client.touch(key, entry, now)
        dkey = (entry.call_id, entry.tag)
        if entry.creating:
            if p.to_tag and 100 < status < 300:
                self._dialog_learnt(entry.conn, entry.call_id, entry.tag, status >= 200, now)
            elif status >= 300:
                self._early_dialog_failed(dkey)
        elif p.cseq_method == b"BYE" and 200 <= status < 300:
            self.dialogs.pop(dkey)
        return Route.TRANSACTION, entry.conn, p

    # -- dialogs -------------------------------------------------------------------------------

    def _dialog_learnt(
        self, conn: K, call_id: bytes, tag: bytes, confirmed: bool, now: float
    ) -> None:
        key = (call_id, tag)
        d = self.dialogs.get(key, now)
        if d is None:
            self.dialogs.put(key, Entry(conn, call_id, tag, confirmed=confirmed), now)
            return
        d.confirmed = d.confirmed or confirmed
        self.dialogs.move(key, d, conn)
        self.dialogs.touch(key, d, now)

    def _dialog_used(self, conn: K, call_id: bytes, tag: bytes, now: float) -> None:
        """An in-dialog request from a local connection: that connection speaks for it now."""
        if tag:
            self._dialog_learnt(conn, call_id, tag, True, now)

    def _early_dialog_failed(self, key: tuple[bytes, bytes]) -> None:
        d = self.dialogs.entries.get(key)
        if d is not None and not d.confirmed:
            self.dialogs.pop(key)

    # -- housekeeping --------------------------------------------------------------------------

    def forget(self, conn: K) -> None:
        """A local connection closed: nothing routes to it any more."""
        for table in self.tables:
            table.forget(conn)

    def expire(self, now: float) -> None:
        for table in self.tables:
            table.expire(now)
