"""The status page in a real headless Chromium (Debian's), offline, against the running sidecar
with real TLS clients: it shows the open connections, a live event arrives when a client
connects, nothing but its own files is loaded, client-controlled text stays text, and with a
token the page shows nothing until the user enters it, then switches tracing with it.

With TLSTRACE_SCREENSHOTS=DIR the screenshots go to DIR (the README's come from there)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.backend import SipBackend
from tests.support.browser import Browser
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

Factory = Callable[..., RelayProcess]
TOKEN = "page-token-7f3a"
#: client-controlled text the page must show as text
HOSTILE_SNI = "<b>x</b><img src=x onerror=document.title='owned'>.example"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with Browser(1200, 760) as b:
        yield b


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


def save(browser: Browser, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    browser.screenshot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = os.environ.get("TLSTRACE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)
    return path


def conn_ids(relay: RelayProcess, token: str | None = None) -> dict[int, str]:
    """Open connections by the client's port."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conns = httpx.get(f"{relay.api_url}/api/connections", headers=headers, timeout=10).json()
    return {int(c["remote"].rsplit(":", 1)[1]): c["id"] for c in conns}


def test_page_shows_connections_and_live_events(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, browser: Browser, tmp_path: Path
) -> None:
    relay = relay_factory(
        {
            "hep_id": [sink.hep_id],
            "trace_on": True,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    phones = [
        TlsClient(relay.port(), server_hostname=name)
        for name in ("pbx.example.com", "phone1.example.com")
    ]
    for i, phone in enumerate(phones):
        phone.send(request("REGISTER", call_id=f"reg{i}@page"))
        phone.recv_messages(1)
    # a handshake failure, so the failures table has a row
    with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as plain:
        plain.sendall(request())
        assert plain.recv(100) == b""
    ids = conn_ids(relay)

    browser.get(relay.api_url + "/")
    for phone in phones:
        browser.wait(
            "return document.querySelector("
            "`#conn-table tbody tr[data-id='${arguments[0]}']`) !== null",
            ids[phone.local_port],
            what=f"row of connection {ids[phone.local_port]}",
        )
    assert "pbx.example.com" in browser.text("#conn-table")
    assert "plain_sip" in browser.text("#failures-table")
    assert "udp:127.0.0.1:" in browser.text("#dest-table")
    assert browser.text("#tracing-state") == "on"
    browser.wait(
        "return document.querySelector('#events-state').textContent === 'live'",
        what="the event stream",
    )

    # a client connects: its event arrives without a reload
    with TlsClient(relay.port(), server_hostname="late.example.com") as late:
        late.send(request(call_id="late@page"))
        late.recv_messages(1)
        port = late.local_port
        line = browser.wait(
            "for (const li of document.querySelectorAll('#events li[data-event=accepted]'))"
            "  if (li.textContent.includes(':' + arguments[0] + ' ')) return li.textContent;"
            "return null",
            port,
            what=f"an accepted event from port {port}",
        )
        assert "late.example.com" in line and "TLSv1.3" in line
        browser.wait(
            "return document.querySelectorAll('#conn-table tbody tr[data-id]').length === 3",
            what="the new connection in the table",
        )
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: sip\r\n\r\n")
            assert plain.recv(100) == b""
        browser.wait(
            "return document.querySelector('#events li[data-event=closed]')",
            what="the failed connection's events",
        )
        browser.wait(
            "return document.querySelector('#failures-table').textContent.includes('not_tls')",
            what="the new failure reason",
        )
        save(browser, tmp_path, "status-page.png")

    # client-controlled text (SNI) is shown as text, never run or parsed as HTML
    try:
        with TlsClient(relay.port(), server_hostname=HOSTILE_SNI) as hostile:
            hostile.send(request(call_id="hostile@page"))
            hostile.recv_messages(1)
    except OSError:
        pass  # refused or not: its events carry the name either way
    browser.wait(
        "return document.querySelector('#events').textContent.includes(arguments[0])",
        HOSTILE_SNI,
        what="the hostile SNI as text",
    )
    assert (
        browser.js(
            "return document.querySelectorAll('#events b, #events img, #conn-table img').length"
        )
        == 0
    )
    assert browser.js("return document.title") == "tlstrace status"

    # offline: the page loaded its own files and nothing else
    origin = relay.api_url
    urls = browser.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(origin + "/") for u in urls), urls
    for phone in phones:
        phone.close_notify()


def test_with_a_token_the_page_shows_nothing_until_given_it(
    relay_factory: Factory, backend: SipBackend, sink: HepSink, browser: Browser, tmp_path: Path
) -> None:
    relay = relay_factory(
        {
            "hep_id": [sink.hep_id],
            "api_token": TOKEN,
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    phone = TlsClient(relay.port(), server_hostname="secret-phone.example.com")
    phone.send(request(call_id="tok@page"))
    phone.recv_messages(1)
    conn_id = conn_ids(relay, TOKEN)[phone.local_port]

    browser.get(relay.api_url + "/")
    browser.wait("return !document.querySelector('#token-panel').hidden", what="the token form")
    time.sleep(0.5)  # would any data arrive, it would by now
    html = browser.js("return document.documentElement.outerHTML")
    for secret in (conn_id, "secret-phone", str(phone.local_port), "0.1.0", "OpenSSL"):
        assert secret not in html
    assert browser.js("return document.querySelector('#content').hidden") is True
    save(browser, tmp_path, "status-token.png")

    browser.type("#token-input", "wrong-token")
    browser.click("#token-submit")
    browser.wait(
        "return document.querySelector('#token-message').textContent.includes('refused')",
        what="the refusal",
    )
    assert conn_id not in browser.js("return document.documentElement.outerHTML")

    browser.type("#token-input", TOKEN)
    browser.click("#token-submit")
    browser.wait(
        "return document.querySelector(`#conn-table tr[data-id='${arguments[0]}']`)",
        conn_id,
        what="the connection once the token is given",
    )
    browser.wait(
        "return document.querySelector('#events-state').textContent === 'live'",
        what="the event stream with the token",
    )
    assert browser.text("#tracing-state") == "off"

    browser.click("#trace-toggle")
    browser.wait(
        "return document.querySelector('#tracing-state').textContent === 'on'", what="tracing on"
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{relay.api_url}/api/trace", headers=auth).json()["tracing"] == "on"
    line = relay.wait_log("tracing switched on by API client 127.0.0.1:")
    assert "tracing switched on by API client" in line
    # the token went in a header: it is neither in the page's address nor in its storage
    # beyond this tab's session
    assert TOKEN not in browser.js("return location.href")
    assert browser.js("return localStorage.length") == 0

    browser.click("#trace-toggle")
    browser.wait(
        "return document.querySelector('#tracing-state').textContent === 'off'", what="tracing off"
    )
    browser.click("#token-forget")
    browser.wait(
        "return !document.querySelector('#token-panel').hidden "
        "&& document.querySelector('#content').hidden",
        what="the form again",
    )
    assert conn_id not in browser.js(
        "return document.querySelector('#content').innerText "
        "+ document.querySelector('header').innerText"
    )
    phone.close_notify()
