"""The ClientHello reader and the choice of server domain, in memory (no sockets)."""

from __future__ import annotations

import contextlib
import ssl
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.pki import Pki
from tlstrace.config import Config
from tlstrace.tls.clienthello import HelloKind, HelloReader, sniff
from tlstrace.tls.contexts import ServerContexts, build_server_contexts


def client_hello(server_hostname: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def as_records(hello: bytes, size: int) -> bytes:
    body = hello[5:]
    return b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(body[i : i + size])) + body[i : i + size]
        for i in range(0, len(body), size)
    )


HELLO = client_hello("a.example")


@given(record_size=st.integers(1, 600), cuts=st.lists(st.integers(1, 900), max_size=40))
def test_the_hello_is_read_however_it_is_cut(record_size: int, cuts: list[int]) -> None:
    wire = as_records(HELLO, record_size)
    reader = HelloReader()
    pos, results = 0, []
    for n in [*cuts, len(wire)]:
        piece = wire[pos : pos + n]
        if not piece:
            break
        pos += len(piece)
        results.append(reader.feed(piece))
        if results[-1].kind is not HelloKind.INCOMPLETE:
            break
    assert [r.kind for r in results[:-1]] == [HelloKind.INCOMPLETE] * (len(results) - 1)
    assert results[-1].kind is HelloKind.TLS and results[-1].sni == "a.example"
    assert pos == len(wire)  # complete exactly with the last byte of the hello


def test_what_is_not_a_clienthello_goes_to_openssl() -> None:
    assert sniff(HELLO[:40]).kind is HelloKind.INCOMPLETE
    assert sniff(client_hello(None)).sni is None
    for odd in (
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x50\x00",  # a record over 16 KiB
        as_records(HELLO, 100)[:105] + b"\x17\x03\x03\x00\x01x",
    ):  # then app data
        assert sniff(odd).kind is HelloKind.TLS


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> ServerContexts:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    domains = []
    for name, sni in (
        ("tenant-a", ["a.example"]),
        ("tenant-b", ["*.b.example"]),
        ("default", ["*"]),
    ):
        files = pki.leaf(f"{name}.example", tag=name)
        domains.append(
            {
                "name": name,
                "match_sip_domain": sni,
                "certificate": str(files.cert),
                "private_key": str(files.key),
            }
        )
    config = Config.model_validate(
        {
            "state_dir": str(Path(tmp_path_factory.mktemp("state"))),
            "server_domain": domains,
            "listener": [{"listen": "tls:127.0.0.1:5061", "backend": "tcp:127.0.0.1:5060"}],
        }
    )
    return build_server_contexts(config, config.listener[0], "test")


def handshake(server_ctx: ssl.SSLContext, sni: str | None) -> ssl.SSLObject:
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    client = cctx.wrap_bio(client_in, client_out, server_hostname=sni)
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        server_in.write(client_out.read())
        try:
            server.do_handshake()
            return server
        except ssl.SSLWantReadError:
            client_in.write(server_out.read())
    raise AssertionError("no handshake")


def name_of(contexts: ServerContexts, ctx: ssl.SSLContext) -> str:
    ident = contexts.identity_of(ctx)
    assert ident is not None
    return ident.domain.name


def test_select_by_sni(contexts: ServerContexts) -> None:
    assert name_of(contexts, contexts.select("a.example")) == "tenant-a"
    assert name_of(contexts, contexts.select("A.EXAMPLE")) == "tenant-a"
    assert name_of(contexts, contexts.select("x.b.example")) == "tenant-b"
    assert name_of(contexts, contexts.select("other.example")) == "default"
    assert name_of(contexts, contexts.select(None)) == "default"


def test_the_sni_callback_never_switches_domains(contexts: ServerContexts) -> None:
    # the handshake runs on the domain tlstrace chose
    server = handshake(contexts.select("a.example"), "a.example")
    assert name_of(contexts, server.context) == "tenant-a"
    # OpenSSL reading another name than tlstrace did is refused, not switched
    with pytest.raises(ssl.SSLError):
        handshake(contexts.select("a.example"), "x.b.example")
