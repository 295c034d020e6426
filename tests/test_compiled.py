"""The hot modules run compiled by mypyc (setup.py), so the suite tests what is deployed.

The modules are listed in pyproject.toml (`[tool.tlstrace.mypyc] modules`). An install with
`TLSTRACE_PURE_PYTHON=1` set is pure Python on purpose: then these checks are skipped.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = os.environ.get("TLSTRACE_PURE_PYTHON", "") not in ("", "0")


def _modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["tlstrace"]["mypyc"]["modules"]
    return modules


MODULES = _modules()


def _c_extensions() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        names: list[str] = tomllib.load(f)["tool"]["tlstrace"]["c"]["extensions"]
    return names


C_EXTENSIONS = _c_extensions()

pytestmark = pytest.mark.skipif(PURE, reason="TLSTRACE_PURE_PYTHON is set: pure Python on purpose")


def test_the_list_names_modules_of_the_project() -> None:
    assert MODULES
    for name in MODULES:
        assert (ROOT / Path(*name.split("."))).with_suffix(".py").is_file(), name


@pytest.mark.parametrize("name", MODULES)
def test_module_is_compiled(name: str) -> None:
    module = importlib.import_module(name)
    path = module.__file__ or ""
    assert path.endswith(".so"), (
        f"{name} runs as pure Python ({path}): compiling it with mypyc failed or was skipped "
        f"at install; `.venv/bin/pip install -v -e .` shows why"
    )


@pytest.mark.parametrize("name", MODULES)
def test_compiled_module_is_not_older_than_its_source(name: str) -> None:
    """An editable install compiles the source as it was then: after an edit, the extension
    still runs the old code until the next install (`make run`, `make test` and `make unit`
    reinstall when a compiled module's source changes)."""
    module = importlib.import_module(name)
    compiled = Path(module.__file__ or "")
    source = (ROOT / Path(*name.split("."))).with_suffix(".py")
    if compiled.parent != source.parent:
        pytest.skip(f"{name} is not imported from this tree ({compiled})")
    assert compiled.stat().st_mtime >= source.stat().st_mtime, (
        f"{source.relative_to(ROOT)} changed since it was compiled: reinstall "
        f"(`.venv/bin/pip install -e '.[dev]'`, or `make unit`)"
    )


@pytest.mark.parametrize("name", C_EXTENSIONS)
def test_c_extension_is_built_and_not_older_than_its_source(name: str) -> None:
    source = (ROOT / Path(*name.split("."))).with_suffix(".c")
    assert source.is_file(), name
    module = importlib.import_module(name)
    built = Path(module.__file__ or "")
    assert built.suffix == ".so", f"{name} is not built ({built})"
    if built.parent == source.parent:
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{source.relative_to(ROOT)} changed since it was built: reinstall"
        )
