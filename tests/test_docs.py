"""The README documents every configuration key, flag, endpoint and metric."""

from __future__ import annotations

import re
from pathlib import Path

from tlstrace.cli import build_parser
from tlstrace.config.model import ClientDomain, Config, Listener, ServerDomain, TraceRule

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    for model in (Config, Listener, ServerDomain, ClientDomain, TraceRule):
        for name in model.model_fields:
            assert f"`{name}`" in README or f"{name} =" in README, f"{model.__name__}.{name}"


def test_every_run_flag_is_documented() -> None:
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    for action in run._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in README, flag


def test_every_metric_is_documented() -> None:
    source = (Path(__file__).parent.parent / "tlstrace" / "metrics.py").read_text()
    names = set(re.findall(r'"(tlstrace_[a-z_]+)"', source))
    assert len(names) > 20
    for name in names:
        documented = name if name != "tlstrace_build" else "tlstrace_build_info"
        assert documented in README, name


def test_every_endpoint_is_documented() -> None:
    source = (Path(__file__).parent.parent / "api" / "app.py").read_text()
    for method, path in re.findall(r'@app\.(get|put|post|delete)\("([^"]+)"', source):
        assert f"`{method.upper()} {path.replace('{conn_id}', '{id}')}`" in README, path
