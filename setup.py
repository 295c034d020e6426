"""Build step: compiles the hot modules with mypyc; everything else is in pyproject.toml.

The modules compiled are listed once, in pyproject.toml (`[tool.tlstrace.mypyc] modules`).
`pip install .` and `pip install -e .` (what `make run` and `make test` do) compile them into
C extensions next to their sources (editable) or into the wheel; each compiled module keeps its
`.py` source, which Python imports instead when there is no extension.

- `TLSTRACE_PURE_PYTHON=1` skips compilation: a pure-Python install.
- If compilation fails (no C compiler, no Python headers, mypyc rejects a module), the package
  installs as pure Python, with a warning on stderr (`pip install -v` shows it; `make` checks
  the result after installing and says so).

mypyc runs when the extensions are built (`build_ext`), not when setup.py is loaded: pip loads
it three times per install.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PURE_ENV = "TLSTRACE_PURE_PYTHON"
#: the shared library holding the compiled modules (top-level module `tlstrace__mypyc`)
GROUP = "tlstrace"
#: the project's own packages, where compiled files from an earlier editable build may lie
PACKAGES = ("tlstrace", "hep", "api")


def compiled_modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["tlstrace"]["mypyc"]["modules"]
    return modules


def pure_python() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def warn(message: str) -> None:
    print(f"\nWARNING: tlstrace: {message}\n", file=sys.stderr, flush=True)


def remove_inplace_extensions() -> None:
    """Delete the compiled files an earlier editable build left beside the sources: they
    would shadow the `.py` files if this build does not replace them."""
    stale = list(ROOT.glob(f"{GROUP}__mypyc.*"))
    for package in PACKAGES:
        stale += (ROOT / package).rglob("*.so")
    for path in stale:
        if path.suffix in (".so", ".pyd"):
            path.unlink()


class BuildMypyc(build_ext):
    """build_ext that runs mypyc on the listed modules, or falls back to pure Python."""

    def finalize_options(self) -> None:
        # mypyc generates the C sources here, so that setuptools sets the extensions up
        self.failed: str | None = None
        if self.distribution.ext_modules is None and not pure_python():
            try:
                self.distribution.ext_modules = self._mypycify()
            except (Exception, SystemExit) as exc:  # mypyc exits on a type error
                self.failed = repr(exc)
                self.distribution.ext_modules = []
        super().finalize_options()

    def run(self) -> None:
        if self.inplace or self.editable_mode:
            remove_inplace_extensions()
        if pure_python():
            warn(f"{PURE_ENV} is set: installing as pure Python (not compiled with mypyc)")
            return
        if self.failed is None:
            try:
                super().run()
            except (Exception, SystemExit) as exc:
                self.failed = repr(exc)
        if self.failed is not None:
            # (an extension half-built is not copied into place: the copy comes last)
            warn(
                f"compiling {', '.join(compiled_modules())} with mypyc failed ({self.failed}); "
                f"installing as pure Python, which works but is slower. A C compiler and "
                f"Python's headers (Debian: gcc, python3-dev) are needed to compile; set "
                f"{PURE_ENV}=1 to skip compiling."
            )
            self.extensions = []
            if self.inplace or self.editable_mode:
                remove_inplace_extensions()

    def _mypycify(self) -> list[Any]:
        from mypyc.build import mypycify

        paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in compiled_modules()]
        return list(mypycify(paths, opt_level="3", group_name=GROUP))

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []

    def get_output_mapping(self) -> dict[str, str]:
        return super().get_output_mapping() if self.extensions else {}


class BinaryDistribution(Distribution):
    """Has extension modules (they are known only when built): a platform wheel, and
    `build_ext` runs."""

    def has_ext_modules(self) -> bool:
        return not pure_python()


setup(cmdclass={"build_ext": BuildMypyc}, distclass=BinaryDistribution)
