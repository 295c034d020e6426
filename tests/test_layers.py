"""No import cycles among the project's own modules, and the layer rules between packages.

Every module of tlstrace/, hep/, api/ and bench/ is parsed with `ast` (nothing is imported) and
every import statement counts: at the top, inside functions, under `if TYPE_CHECKING:`. An
import is an edge to the project module it names: `from pkg import name` where `pkg.name` is a
module is an edge to that module, otherwise to `pkg` (a package's `__init__`); `import a.b.c`
is an edge to `a.b.c` (the parent packages' `__init__` modules, which Python runs first, are not
counted: a package re-exporting its own modules is the usual shape, not a cycle).

The layer rules (see `/work/shared/docs/core-design.md`; a lower layer needing something from
above defines a small Protocol instead of importing it):
- hep/ imports nothing from tlstrace/, api/ or bench/;
- api/ reaches the process only through the control seam: from tlstrace/ it imports
  `tlstrace.control` (the protocol and its plain data), `tlstrace.metrics` (the collector,
  itself over the seam), `tlstrace.feed` (the event feed's viewer queues),
  `tlstrace.config` (the configuration model), `tlstrace.fds` and the package itself (its
  version); never `tlstrace.app`, `tlstrace.sidecar_control`, `tlstrace.relay`, `tlstrace.trace`;
- the metrics collector (`tlstrace.metrics`) takes the seam and nothing else from the process;
- the seam (`tlstrace.control`) imports nothing above it;
- within tlstrace/, only the process (`tlstrace.app`) imports api/ (it serves it);
- nothing but bench/ imports bench/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tlstrace", "hep", "api", "bench")

#: what api/ may import from tlstrace/ (a name ending in ".*": the package's modules too)
API_MAY_IMPORT = (
    "tlstrace",
    "tlstrace.control",
    "tlstrace.metrics",
    "tlstrace.feed",
    "tlstrace.config",
    "tlstrace.config.*",
    "tlstrace.fds",
)

#: elementary cycles listed at most, when something went badly wrong
_MAX_CYCLES = 200

Graph = dict[str, set[str]]


def find_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages under `root`."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` (in file `path`) imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _longest_module_prefix(alias.name, modules)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, is_package, node.level, node.module)
            if base not in modules:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    found.discard(name)
    return found


def _absolute(name: str, is_package: bool, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    package = package[: len(package) - (level - 1)]
    return ".".join([*package, *([module] if module else [])])


def _longest_module_prefix(dotted: str, modules: dict[str, Path]) -> str | None:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    modules = find_modules(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: Graph, limit: int = _MAX_CYCLES) -> list[tuple[str, ...]]:
    """Every elementary cycle (at most `limit`), each starting at its smallest module."""
    cycles: list[tuple[str, ...]] = []
    order = sorted(graph)
    for i, start in enumerate(order):
        _walk(graph, set(order[i + 1 :]), [start], cycles, limit)
    return cycles


def _walk(
    graph: Graph, later: set[str], path: list[str], cycles: list[tuple[str, ...]], limit: int
) -> None:
    """The cycles through `path` back to its first module, via modules in `later` only."""
    for nxt in sorted(graph.get(path[-1], ())):
        if len(cycles) >= limit:
            return
        if nxt == path[0]:
            cycles.append(tuple(path))
        elif nxt in later and nxt not in path:
            path.append(nxt)
            _walk(graph, later, path, cycles, limit)
            path.pop()


def _show(cycle: tuple[str, ...]) -> str:
    return " -> ".join([*cycle, cycle[0]])


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_no_import_cycles(graph: Graph) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_show(c) for c in cycles)


def _from(graph: Graph, prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in graph.items() if m == prefix or m.startswith(prefix + ".")}


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_hep_imports_only_hep(graph: Graph) -> None:
    bad = {
        m: sorted(d for d in deps if not _under(d, "hep"))
        for m, deps in _from(graph, "hep").items()
    }
    assert not {m: d for m, d in bad.items() if d}


def _api_may_import(name: str) -> bool:
    for allowed in API_MAY_IMPORT:
        if allowed.endswith(".*"):
            if name.startswith(allowed[:-1]):
                return True
        elif name == allowed:
            return True
    return False


def test_api_reaches_the_process_only_through_the_control_seam(graph: Graph) -> None:
    bad = {
        m: sorted(d for d in deps if _under(d, "tlstrace") and not _api_may_import(d))
        for m, deps in _from(graph, "api").items()
    }
    assert not {m: d for m, d in bad.items() if d}


def test_the_metrics_collector_takes_the_control_seam_only(graph: Graph) -> None:
    assert graph["tlstrace.metrics"] <= {"tlstrace", "tlstrace.control"}


def test_the_control_seam_imports_nothing_above_it(graph: Graph) -> None:
    above = ("api", "tlstrace.app", "tlstrace.sidecar_control", "tlstrace.metrics", "bench")
    assert not [d for d in graph["tlstrace.control"] if any(_under(d, a) for a in above)]


def test_only_the_process_imports_the_api(graph: Graph) -> None:
    importers = {
        m for m, deps in _from(graph, "tlstrace").items() if any(_under(d, "api") for d in deps)
    }
    assert importers <= {"tlstrace.app"}


def test_nothing_but_bench_imports_bench(graph: Graph) -> None:
    importers = {
        m
        for m, deps in graph.items()
        if not _under(m, "bench") and any(_under(d, "bench") for d in deps)
    }
    assert not importers


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A small tree with one cycle made of each kind of import the checker must see."""
    files = {
        "p/__init__.py": "",
        "p/a.py": "from p import b\n",  # a submodule imported by name
        "p/b.py": "def f() -> None:\n    from . import c\n",  # relative, inside a function
        "p/c.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    import p.d.e\n"  # under TYPE_CHECKING, dotted
        ),
        "p/d/__init__.py": "from p.a import x\n",  # a package's __init__ importing a module
        "p/d/e.py": "from p.d import thing\n",  # a name from a package: its __init__
        "p/solo.py": "import os\nfrom p.d.e import y\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    g = import_graph(tmp_path, ["p"])
    assert g == {
        "p": set(),
        "p.a": {"p.b"},
        "p.b": {"p.c"},
        "p.c": {"p.d.e"},
        "p.d": {"p.a"},
        "p.d.e": {"p.d"},
        "p.solo": {"p.d.e"},
    }
    assert find_cycles(g) == [("p.a", "p.b", "p.c", "p.d.e", "p.d")]
