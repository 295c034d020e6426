"""The API's documentation pages in a real browser with no network: Swagger UI and ReDoc render
from the sidecar alone, open without the token, and Swagger UI's Authorize button makes "Try it
out" work against a sidecar that requires the token."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.backend import SipBackend
from tests.support.headless_chromium import chromium
from tests.support.hepsink import HepSink
from tests.support.relay import RelayProcess

TOKEN = "docs-token-7f3a"
GET_TRACE = "#operations-tracing-get_trace_api_trace_get"
PUT_TRACE = "#operations-tracing-put_trace_api_trace_put"


@pytest.fixture
def sink() -> Iterator[HepSink]:
    with HepSink() as s:
        yield s


@pytest.fixture
def sidecar(
    relay_factory: Callable[..., RelayProcess], backend: SipBackend, sink: HepSink
) -> RelayProcess:
    return relay_factory(
        {
            "api_token": TOKEN,
            "hep_id": [sink.hep_id],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )


def wait(driver: WebDriver, css: str, timeout: float = 20) -> None:
    WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def nothing_from_elsewhere(driver: WebDriver, origin: str) -> None:
    """Every resource came from the sidecar; any other one was blocked before it left."""
    names = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    log = json.dumps(driver.get_log("browser"))
    for name in names:
        parts = urlsplit(name)
        if f"{parts.scheme}://{parts.netloc}" != origin:
            assert name in log and "has been blocked" in log, (name, log)


def try_it(driver: WebDriver, op: str, body: str | None = None) -> tuple[str, str]:
    """Swagger UI's "Try it out" and "Execute" on `op`: (status, response body)."""
    if not driver.find_elements(By.CSS_SELECTOR, f"{op} button.execute"):
        if not driver.find_elements(By.CSS_SELECTOR, f"{op} button.try-out__btn"):
            driver.find_element(By.CSS_SELECTOR, f"{op} .opblock-summary").click()
            wait(driver, f"{op} button.try-out__btn")
        driver.find_element(By.CSS_SELECTOR, f"{op} button.try-out__btn").click()
        wait(driver, f"{op} button.execute")
    if body is not None:
        area = driver.find_element(By.CSS_SELECTOR, f"{op} textarea.body-param__text")
        area.clear()
        area.send_keys(body)
    for old in driver.find_elements(By.CSS_SELECTOR, f"{op} .btn-clear"):
        old.click()
    driver.find_element(By.CSS_SELECTOR, f"{op} button.execute").click()
    cell = f"{op} .live-responses-table .response .response-col_status"
    wait(driver, cell)
    status = driver.find_element(By.CSS_SELECTOR, cell).text.strip()
    text = driver.find_element(
        By.CSS_SELECTOR, f"{op} .live-responses-table .response-col_description pre"
    ).text
    return status, text


def test_swagger_ui_offline_with_authorize(sidecar: RelayProcess, tmp_path: Path) -> None:
    schema = httpx.get(f"{sidecar.api_url}/openapi.json").json()  # no token needed
    operations = sum(len(ops) for ops in schema["paths"].values())
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert schema["paths"]["/api/trace"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    with chromium() as driver:
        driver.get(f"{sidecar.api_url}/docs")
        wait(driver, ".opblock")
        shown = driver.find_elements(By.CSS_SELECTOR, ".opblock")
        assert len(shown) == operations
        paths = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/api/trace", "/api/connections", "/api/reload", "/readyz"} <= paths
        nothing_from_elsewhere(driver, sidecar.api_url)

        status, text = try_it(driver, GET_TRACE)
        assert status == "401", text  # not authorized yet: the sidecar refuses

        driver.find_element(By.CSS_SELECTOR, "button.authorize").click()
        wait(driver, ".modal-ux input")
        assert "bearer" in driver.find_element(By.CSS_SELECTOR, ".modal-ux").text.lower()
        driver.find_element(By.CSS_SELECTOR, ".modal-ux input").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper button.authorize").click()
        driver.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()

        status, text = try_it(driver, GET_TRACE)
        assert status == "200", text
        assert json.loads(text)["tracing"] == "off"
        status, text = try_it(driver, PUT_TRACE, '{"tracing": "on", "for_seconds": 600}')
        assert status == "200", text
        assert json.loads(text)["tracing"] == "on" and json.loads(text)["until"]
        driver.save_screenshot(str(tmp_path / "swagger-ui.png"))
    state = httpx.get(
        f"{sidecar.api_url}/api/trace", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert state["tracing"] == "on"  # the browser's PUT reached the sidecar
    assert TOKEN not in sidecar.log


def test_redoc_offline(sidecar: RelayProcess, tmp_path: Path) -> None:
    with chromium() as driver:
        driver.get(f"{sidecar.api_url}/redoc")
        WebDriverWait(driver, 20).until(
            lambda d: "Put Trace" in d.find_element(By.TAG_NAME, "body").text
        )
        text = driver.find_element(By.TAG_NAME, "body").text
        for title in ("Get Trace", "List Connections", "Reload", "Readyz"):
            assert title in text
        assert "for_seconds" in text
        nothing_from_elsewhere(driver, sidecar.api_url)
        driver.save_screenshot(str(tmp_path / "redoc.png"))
