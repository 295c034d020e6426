"""The dashboard and the alert rules against a real Prometheus (Debian's package) scraping a real
sidecar: Prometheus runs with dashboards/prometheus/prometheus.yml (its tlstrace job pointed at
the test sidecar, with the bearer token) and dashboards/prometheus/alerts.yml, while the test
drives traffic that makes every metric family exist. Then every query of
dashboards/tlstrace.json and every alert expression (its comparisons taken off) must return
data from Prometheus's HTTP API, every rule must load and evaluate without error, and the
failures the test caused must make their alerts pending or firing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.backend import SipBackend
from tests.support.hepsink import HepSink
from tests.support.net import free_port
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, request

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "tlstrace.json"
PROM_CONFIG = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "dashboards" / "prometheus" / "alerts.yml"
TOKEN = "prom-test-token"
#: what Grafana would put in for its variables; $job/$instance are set per run
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
#: alerts the traffic below must trigger (pending or firing)
INDUCED_ALERTS = {
    "TlstraceUpstreamDown",  # a backend that never answers
    "TlstraceBackendConnectFailures",
    "TlstraceMessagesDropped",  # the message sent to that backend
    "TlstraceHepPacketsDropped",  # a HEP destination whose port is closed
    "TlstraceHepSendErrors",
}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed: make deps"
)


# ------------------------------------------------------------------------- PromQL helpers


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel target, including panels inside rows."""
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))

    walk(dashboard["panels"])
    return out


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Template variable queries as PromQL: label_values(SEL, L) -> count by (L) (SEL)."""
    out = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "datasource":  # picks the datasource, queries nothing
            continue
        q = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
        assert m, f"variable {v['name']}: unexpected query {q!r}"
        out.append((f"variable {v['name']}", f"count by ({m[2]}) ({m[1]})"))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"unknown variable left in {expr!r}"
    return expr


_SET_OPS = re.compile(r"\b(and|or|unless)\b(\s+(on|ignoring)\s*\([^)]*\))?")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*bool\b)?")
_MODIFIER = re.compile(r"^\s*((on|ignoring|group_left|group_right)\s*\([^)]*\)\s*)+")
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def _split_top(expr: str, pattern: re.Pattern[str]) -> list[str]:
    """Split `expr` where `pattern` matches outside (), {}, [] and quotes."""
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = pattern.match(expr, i)
            if m:
                parts.append(expr[start:i])
                start = i = m.end()
                continue
        i += 1
    parts.append(expr[start:])
    return parts


def operands(expr: str) -> list[str]:
    """The value expressions of an alert condition: `A / B > 0.1 and on (x) C == 1` ->
    [`A / B`, `C`]. Numbers are dropped; each operand must return data in a live system."""
    out = []
    for side in _split_top(expr, _SET_OPS):
        for part in _split_top(side, _COMPARISON):
            part = _MODIFIER.sub("", part).strip()
            if part and not _NUMBER.match(part):
                out.append(part)
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names in `expr` (ours, the process collector's, and `up`)."""
    return set(re.findall(r"\b(?:tlstrace|process|python)_\w+|\bup\b", expr))


# ------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path

    @property
    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def prometheus_config(workdir: Path, target: str) -> Path:
    """The repository's prometheus.yml with its tlstrace job aimed at the test sidecar, every
    interval 1 s, and only that job (the others name compose hosts)."""
    config = yaml.safe_load(PROM_CONFIG.read_text())
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tlstrace"]
    assert job["authorization"]["type"] == "Bearer"
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = [job]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(workdir: Path, target: str) -> Prometheus:
    config = prometheus_config(workdir, target)
    port = free_port()
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", workdir)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({proc.returncode}):\n{prom.log}")
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=1).status_code == 200:
                return prom
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            prom.stop()
            raise AssertionError(f"prometheus not ready after 30 s:\n{prom.log}")
        time.sleep(0.1)


# ------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    relay: RelayProcess
    prom: Prometheus
    instance: str

    @property
    def listeners(self) -> list[str]:
        return [str(li["listen"]) for li in self.relay.config["listener"]]

    @property
    def grafana_vars(self) -> dict[str, str]:
        # "All" of a multi-value variable, as Grafana writes it for Prometheus: each value
        # regex-escaped, its backslashes escaped again inside the PromQL string
        every = "(" + "|".join(re.escape(li).replace("\\", "\\\\") for li in self.listeners) + ")"
        return {**GRAFANA_VARS, "$job": "tlstrace", "$instance": self.instance, "$listener": every}


def blackhole() -> tuple[socket.socket, socket.socket]:
    """A listening port whose accept queue is full: connects to it hang (SYNs are dropped)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    filler = socket.create_connection(lsock.getsockname()[:2], timeout=2)
    return lsock, filler


def drive_traffic(relay: RelayProcess, prom: Prometheus) -> None:
    """Traffic that makes every labelled series appear (see the comments)."""
    good, dead = relay.port(0), relay.port(1)
    with TlsClient(good) as client:  # messages both ways, a keep-alive ping
        client.send(request("REGISTER", "prom-reg@t"))
        client.send(request("OPTIONS", "prom-opt@t"))
        client.recv_messages(2)
        client.send(b"\r\n\r\n")
        assert client.recv_keepalive() == b"\r\n"
        client.close_notify()  # closed{reason="eof"}
    with socket.create_connection(("127.0.0.1", good), timeout=5) as plain:  # handshake failure
        plain.sendall(request())  # plain-text SIP on the TLS port
        plain.settimeout(5)
        assert plain.recv(100) == b""
    with TlsClient(good) as broken:  # framing error: no Content-Length
        broken.send(b"OPTIONS sip:x SIP/2.0\r\nCall-ID: x\r\n\r\n")
        assert broken.wait_closed()
    # A backend that never answers: upstream down, connect failures, and a dropped message.
    # Twice, with a scrape in between: a labelled counter is born at its first increment, and
    # increase() needs a second one to see it grow.
    for attempt in range(2):
        with TlsClient(dead) as stuck:
            stuck.send(request("OPTIONS", f"prom-dead-{attempt}@t"))
            assert stuck.wait_closed()
        deadline = time.monotonic() + 10
        while not prom.query(f"tlstrace_messages_dropped_total >= {attempt + 1}"):
            assert time.monotonic() < deadline, "the dropped message was never scraped"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prometheus")
    down_port = free_port(kind=socket.SOCK_DGRAM)
    with contextlib.ExitStack() as cleanup:
        backend = cleanup.enter_context(SipBackend())
        sink = cleanup.enter_context(HepSink())
        lsock, filler = blackhole()
        cleanup.callback(lsock.close)
        cleanup.callback(filler.close)
        relay = cleanup.enter_context(
            RelayProcess(
                workdir / "relay",
                {
                    "api_token": TOKEN,
                    "trace_on": True,
                    # the backend connect timeout, for the black-holed backend
                    "tls_handshake_timeout": 1500,
                    "hep_id": [
                        sink.hep_id.replace("[sink]", "[homer]"),
                        f"[down]127.0.0.1:{down_port};transport=udp",
                    ],
                    "listener": [
                        RelayProcess.tls_listener(backend.port),
                        RelayProcess.tls_listener(lsock.getsockname()[1]),
                        {  # (its WebSocket series exist from the start)
                            "listen": f"wss:127.0.0.1:{free_port()}",
                            "backend": f"tcp:127.0.0.1:{backend.port}",
                        },
                    ],
                },
            )
        )
        instance = str(relay.config["api_listen"])
        prom = start_prometheus(workdir, instance)
        cleanup.callback(prom.stop)
        wait_scraped(prom)  # counters are seen at 0 before the traffic
        drive_traffic(relay, prom)
        yield Stack(relay, prom, instance)


def wait_scraped(prom: Prometheus, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not prom.query('up{job="tlstrace"} == 1'):
        assert time.monotonic() < deadline, (
            f"tlstrace not scraped after {timeout:.0f} s: {prom.api('/api/v1/targets')}\n{prom.log}"
        )
        time.sleep(0.2)


def wait_for_data(
    prom: Prometheus, queries: list[tuple[str, str]], timeout: float = 30.0
) -> dict[str, list[dict[str, Any]]]:
    """Query until every expression returns data; fail naming those that never did."""
    deadline = time.monotonic() + timeout
    results: dict[str, list[dict[str, Any]]] = {}
    while True:
        empty = []
        for where, expr in queries:
            if not results.get(expr):
                results[expr] = prom.query(expr)
            if not results[expr]:
                empty.append(f"{where}: {expr}")
        if not empty:
            return results
        if time.monotonic() > deadline:
            raise AssertionError(
                "no data after {:.0f} s for:\n  {}".format(timeout, "\n  ".join(empty))
            )
        time.sleep(0.5)


# ------------------------------------------------------------------------- tests


def test_operands_split_alert_conditions() -> None:
    assert operands('up{job="t"} == 0') == ['up{job="t"}']
    assert operands('sum by (a) (rate(x{k=~"1|2"}[5m])) / sum(y) > 0.1 and sum(y) > 0.05') == [
        'sum by (a) (rate(x{k=~"1|2"}[5m])) / sum(y)',
        "sum(y)",
    ]
    assert operands("a == 0 and on (job, instance) b == 1") == ["a", "b"]
    assert operands('x{l=">"} >= bool 2') == ['x{l=">"}']
    assert operands("(a - time()) / 86400 < 14") == ["(a - time()) / 86400"]


def test_scrape_uses_the_token(stack: Stack) -> None:
    targets = stack.prom.api("/api/v1/targets")["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("tlstrace", "up")], targets
    assert httpx.get(f"{stack.relay.api_url}/metrics").status_code == 401


def test_every_metric_family_is_on_the_dashboard(stack: Stack) -> None:
    text = httpx.get(
        f"{stack.relay.api_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    ).text
    families = list(text_string_to_metric_families(text))
    dashboard = json.loads(DASHBOARD.read_text())
    used = " ".join(expr for _, expr in dashboard_queries(dashboard))
    missing = []
    for fam in families:
        names = {s.name for s in fam.samples} | {
            fam.name,
            f"{fam.name}_total",
            f"{fam.name}_info",
            f"{fam.name}_bucket",
        }
        if not any(re.search(rf"\b{re.escape(n)}\b", used) for n in names):
            missing.append(fam.name)
    assert not missing, f"metric families with no dashboard panel: {missing}"
    # and every metric the dashboard or the rules name is one the sidecar exports
    exported = (
        {s.name for fam in families for s in fam.samples}
        | {f"{f.name}_total" for f in families if f.type == "counter"}
        | {"up"}
    )
    rules = yaml.safe_load(ALERTS.read_text())
    rule_exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for name in sorted(metric_names(used + " " + rule_exprs)):
        assert name in exported, f"{name} is used but not exported by the sidecar"


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (where, substitute(expr, stack.grafana_vars))
        for where, expr in dashboard_queries(dashboard) + variable_queries(dashboard)
    ]
    assert len(queries) > 40
    results = wait_for_data(stack.prom, queries)
    # label filters the panels rely on hold values the sidecar really uses
    closed = results[
        substitute(
            'sum by (listener, reason) (rate(tlstrace_connections_closed_total{job=~"$job", '
            'instance=~"$instance", listener=~"$listener"}[$__rate_interval]))',
            stack.grafana_vars,
        )
    ]
    assert {r["metric"]["reason"] for r in closed} >= {
        "eof",
        "handshake_failed",
        "framing_error",
        "backend_unreachable",
    }


def test_alert_rules_load_and_their_series_exist(stack: Stack) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    defined = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for name, rule in defined.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert "for" in rule and rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
    queries = [
        (f"alert {name}", operand)
        for name, rule in defined.items()
        for operand in operands(rule["expr"])
    ]
    wait_for_data(stack.prom, queries)
    deadline = time.monotonic() + 15
    while True:  # every rule has been evaluated at least once, without error
        loaded = {
            r["name"]: r for g in stack.prom.api("/api/v1/rules")["groups"] for r in g["rules"]
        }
        if set(loaded) == set(defined) and all(
            r["lastEvaluation"] != "0001-01-01T00:00:00Z" for r in loaded.values()
        ):
            break
        assert time.monotonic() < deadline, f"rules not all evaluated: {sorted(loaded)}"
        time.sleep(0.5)
    for name, r in loaded.items():
        assert r["health"] == "ok" and not r.get("lastError"), (name, r)


def test_caused_failures_raise_their_alerts(stack: Stack) -> None:
    deadline = time.monotonic() + 30
    while True:
        active = {
            a["labels"]["alertname"]: a
            for a in stack.prom.api("/api/v1/alerts")["alerts"]
            if a["state"] in ("pending", "firing")
        }
        if set(active) >= INDUCED_ALERTS:
            break
        assert time.monotonic() < deadline, (
            f"alerts not raised: {sorted(INDUCED_ALERTS - set(active))}; active: {sorted(active)}"
        )
        time.sleep(0.5)
    down = active["TlstraceUpstreamDown"]["labels"]
    assert (down["role"], down["upstream"]) == (
        "backend",
        str(stack.relay.config["listener"][1]["backend"]),
    )
    assert active["TlstraceHepPacketsDropped"]["labels"]["destination"] == "down"
    assert active["TlstraceMessagesDropped"]["labels"]["reason"] == "backend_unreachable"
    assert "TlstraceDown" not in active and "TlstraceCertificateExpiresSoon" not in active


def test_connection_handshake_and_message_metrics_tell_listeners_apart(stack: Stack) -> None:
    good, dead, wss = stack.listeners
    for metric in (
        "tlstrace_connections_open",
        "tlstrace_connections_accepted_total",
        "tlstrace_connections_refused_total",
        "tlstrace_connections_closed_total",
        "tlstrace_handshakes_total",
        "tlstrace_handshake_failures_total",
        "tlstrace_handshake_duration_seconds_count",
        "tlstrace_sip_messages_total",
        "tlstrace_bytes_total",
    ):
        found = stack.prom.query(f'count by (listener) ({metric}{{job="tlstrace"}})')
        assert {r["metric"].get("listener") for r in found} - {wss} == {good, dead}, metric
    q = stack.prom.query
    # the REGISTER and the plain-text SIP came to the first listener only
    registers = q('sum by (listener) (tlstrace_sip_messages_total{kind="REGISTER"}) > 0')
    assert [r["metric"]["listener"] for r in registers] == [good]
    plain = q('sum by (listener) (tlstrace_handshake_failures_total{reason="plain_sip"}) > 0')
    assert [r["metric"]["listener"] for r in plain] == [good]
    unreachable = q(
        'sum by (listener) (tlstrace_connections_closed_total{reason="backend_unreachable"}) > 0'
    )
    assert [r["metric"]["listener"] for r in unreachable] == [dead]
    # handshake durations by listener and direction
    durations = q("sum by (listener, direction) (tlstrace_handshake_duration_seconds_count) > 0")
    assert {(r["metric"]["listener"], r["metric"]["direction"]) for r in durations} == {
        (good, "inbound"),
        (dead, "inbound"),
    }


def test_no_series_has_an_empty_label_value(stack: Stack) -> None:
    """Prometheus drops empty labels, so this reads /metrics itself; a failed handshake says
    that it negotiated no version and no cipher."""
    text = httpx.get(
        f"{stack.relay.api_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
    ).text
    empty = [
        (s.name, s.labels)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if any(v == "" for v in s.labels.values())
    ]
    assert not empty, empty
    failures = stack.prom.query('tlstrace_handshakes_total{result="failure"} > 0')
    assert failures
    for r in failures:
        assert (r["metric"]["version"], r["metric"]["cipher"]) == ("none", "none"), r
