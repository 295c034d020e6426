"""Headless Chromium (Debian's `chromium` and `chromium-driver`) driven over the W3C WebDriver
protocol, with just the calls the tests need: open a page, run a script, type, click, take a
screenshot. Offline: no sync, no component updates, no background networking, a fresh
profile."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port, wait_port

CHROMIUM = "/usr/lib/chromium/chromium"  # the binary; /usr/bin/chromium is a shell wrapper
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]


def need_chromium() -> None:
    if not (Path(CHROMIUM).exists() and shutil.which("chromedriver")):
        pytest.fail("chromium and chromium-driver are needed: scripts/install-test-deps.sh")


class Browser:
    def __init__(self, width: int = 1200, height: int = 900) -> None:
        need_chromium()
        self.profile = tempfile.TemporaryDirectory(prefix="tlstrace-chromium-")
        port = free_port()
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port("127.0.0.1", port)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        args = [*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={self.profile.name}"]
        r = self.http.post(
            "/session",
            json={
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                    }
                }
            },
        )
        r.raise_for_status()
        self.session = r.json()["value"]["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self.http.request(
            method,
            f"/session/{self.session}{path}",
            json=body if body is not None else ({} if method == "POST" else None),
        )
        value = r.json().get("value")
        if r.status_code != 200:
            raise AssertionError(f"webdriver {method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; `arguments` holds args) and return its value."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script: str, *args: Any, timeout: float = 15.0, what: str = "") -> Any:
        """Run `script` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.js("return document.body.innerText")
                raise AssertionError(f"timed out waiting for {what or script}; page:\n{text}")
            time.sleep(0.1)

    def element(self, css: str) -> str:
        value = self._call("POST", "/element", {"using": "css selector", "value": css})
        return str(next(iter(value.values())))

    def type(self, css: str, text: str) -> None:
        self._call("POST", f"/element/{self.element(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"/element/{self.element(css)}/click")

    def text(self, css: str = "body") -> str:
        return str(
            self.js(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css
            )
        )

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))

    def until(self, check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.http.delete(f"/session/{self.session}")
        finally:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait(5)
            self.http.close()
            self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
