"""Build step: compiles the hot modules with mypyc, and the few hand-written C helpers;
everything else is in pyproject.toml.

The modules compiled are listed once, in pyproject.toml (`[tool.tlstrace.mypyc] modules`), and
so are the C helpers (`[tool.tlstrace.c] extensions`: each module's source is `name.c`, and the
Python module that uses it has the same code in Python for when it is not built).
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

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PURE_ENV = "TLSTRACE_PURE_PYTHON"
#: the shared library holding the compiled modules (top-level module `tlstrace__mypyc`)
GROUP = "tlstrace"
#: mypy's options for the build, beside pyproject.toml's [tool.mypy]: the listed modules are
#: checked (strict), the modules they import are read for their types but not checked (that is
#: `make lint`'s job), and installed packages are never looked at, so that the result is the
#: same whether pip has installed the dependencies yet or not (it builds before installing
#: them): their types are Any to the compiled code. Its cache stays apart from `make lint`'s.
MYPY_OPTIONS = (
    "--follow-imports=silent",
    "--no-site-packages",
    "--ignore-missing-imports",
    "--cache-dir=build/mypy_cache",
)
#: the commands that only write metadata (pip's first two calls): they need no C sources
METADATA_COMMANDS = {"egg_info", "dist_info", "sdist"}
#: the project's own packages, where compiled files from an earlier editable build may lie
PACKAGES = ("tlstrace", "hep", "api")


def compiled_modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["tlstrace"]["mypyc"]["modules"]
    return modules


def c_extensions() -> list[Extension]:
    """The hand-written C helpers (`[tool.tlstrace.c] extensions`), each `name.c` beside the
    Python module that imports it and falls back to Python code when it is not built."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        names: list[str] = tomllib.load(f)["tool"]["tlstrace"]["c"]["extensions"]
    return [
        Extension(name, [str(Path(*name.split(".")).with_suffix(".c"))], extra_compile_args=["-O2"])
        for name in names
    ]


def pure_python() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def warn(message: str) -> None:
    print(f"\nWARNING: tlstrace: {message}\n", file=sys.stderr, flush=True)


def remove_extensions(base: Path) -> None:
    """Delete the compiled files an earlier build left in `base` (beside the sources for an
    editable build, else the build directory the wheel is made from): they would shadow the
    `.py` files, or go into the wheel, if this build does not replace them."""
    stale = list(base.glob(f"{GROUP}__mypyc.*"))
    for package in PACKAGES:
        stale += (base / package).rglob("*.so")
    for path in stale:
        if path.suffix in (".so", ".pyd"):
            path.unlink()


class BuildMypyc(build_ext):
    """build_ext that runs mypyc on the listed modules, or falls back to pure Python."""

    def finalize_options(self) -> None:
        # mypyc generates the C sources here, so that setuptools sets the extensions up
        self.failed: str | None = None
        metadata_only = set(self.distribution.commands) <= METADATA_COMMANDS
        if self.distribution.ext_modules is None and not pure_python() and not metadata_only:
            try:
                self.distribution.ext_modules = self._mypycify()
            except (Exception, SystemExit) as exc:  # mypyc exits on a type error
                self.failed = repr(exc)
                self.distribution.ext_modules = []
        super().finalize_options()

    def _remove_extensions(self) -> None:
        remove_extensions(Path(self.build_lib))
        if self.inplace or self.editable_mode:
            remove_extensions(ROOT)

    def run(self) -> None:
        self._remove_extensions()
        if pure_python():
            warn(f"{PURE_ENV} is set: installing as pure Python (not compiled with mypyc)")
            return
        if self.failed is None:
            try:
                super().run()
            except (Exception, SystemExit) as exc:
                self.failed = repr(exc)
        if self.failed is not None:
            # (some extensions may be built, and even copied into place: remove them all)
            warn(
                f"compiling {', '.join(compiled_modules())} with mypyc failed ({self.failed}); "
                f"installing as pure Python, which works but is slower. A C compiler and "
                f"Python's headers (Debian: gcc, python3-dev) are needed to compile; set "
                f"{PURE_ENV}=1 to skip compiling."
            )
            self.extensions = []
            self._remove_extensions()

    def _mypycify(self) -> list[Any]:
        from mypyc.build import mypycify

        paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in compiled_modules()]
        compiled = mypycify([*MYPY_OPTIONS, *paths], opt_level="3", group_name=GROUP)
        return [*compiled, *c_extensions()]

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []

    def get_output_mapping(self) -> dict[str, str]:
        return super().get_output_mapping() if self.extensions else {}


class BinaryDistribution(Distribution):
    """Has extension modules (they are known only when built): `build_ext` runs, and the
    wheel is tagged for this platform. (It runs in pure-Python mode too, to clear an earlier
    editable build's extensions and to say that it does not compile.)"""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_ext": BuildMypyc}, distclass=BinaryDistribution)
