"""Debian's headless Chromium driven by Selenium through Debian's chromedriver, with no network
but this machine's loopback: host names do not resolve (a CDN cannot answer) and anything else
goes to a proxy that is not there. A fresh profile; no sync, updates or background traffic."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

#: the binary itself: /usr/bin/chromium is Debian's wrapper script
CHROMIUM = "/usr/lib/chromium/chromium"
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
    # no network: no name resolves, and every address but loopback meets a dead proxy
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
]


@contextmanager
def chromium(
    width: int = 1280, height: int = 1600, flags: Sequence[str] = ()
) -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    if not (Path(CHROMIUM).exists() and driver_path):
        pytest.fail("chromium and chromium-driver are needed: scripts/install-test-deps.sh")
    with tempfile.TemporaryDirectory(prefix="tlstrace-chromium-") as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in [
            *FLAGS,
            *flags,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # both paths given: Selenium Manager (which would download drivers) never runs
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        try:
            yield driver
        finally:
            driver.quit()
