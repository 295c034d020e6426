"""Every flag and argument of every subcommand has its --help text, and `make run ARGS=...`
hands its flags to `tlstrace run`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlstrace.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def parsers(
    p: argparse.ArgumentParser, name: str = "tlstrace"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_option_and_argument_has_help() -> None:
    missing = []
    commands = 0
    for name, p in parsers(build_parser()):
        commands += 1
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = "/".join(action.option_strings) or action.dest
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:  # each subcommand's one-line help
                    if not (choice.help or "").strip():
                        missing.append(f"{name} {choice.dest}")
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {what}")
    assert commands >= 4  # tlstrace, run, hep-listen, demo
    assert not missing, f"without --help text: {missing}"


def test_help_runs_for_every_subcommand() -> None:
    for name, _ in parsers(build_parser()):
        argv = name.split()[1:]
        r = subprocess.run(
            [sys.executable, "-m", "tlstrace", *argv, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0 and r.stdout.startswith("usage: "), (name, r.stderr)


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """make in the repository with this test run's virtual environment, which it must not
    rebuild (-o: the stamp counts as up to date)."""
    venv = Path(sys.prefix)
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            f"VENV={venv}",
            "-o",
            f"{venv}/bin/.installed",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TLSTRACE_API_TOKEN": ""},
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_passes_args_to_tlstrace_run(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    # without ARGS, the command is what it always was
    dry = make("-n", "run")
    assert dry.returncode == 0 and dry.stdout == f"{venv}/bin/tlstrace run\n", dry.stdout
    dry = make("-n", "run", "ARGS=--trace --hep '[h]127.0.0.1:9060'")
    assert dry.stdout == f"{venv}/bin/tlstrace run --trace --hep '[h]127.0.0.1:9060'\n"
    # and tlstrace really receives them: a missing file is reported by `tlstrace run`
    missing = tmp_path / "nowhere.toml"
    r = make("run", f"ARGS=--config {missing} --log-level debug")
    assert r.returncode != 0
    assert f"tlstrace: configuration error: {missing}: --config: file not found" in r.stderr
    r = make("run", "ARGS=--log-level loud")
    assert "argument --log-level: invalid choice: 'loud'" in r.stderr
