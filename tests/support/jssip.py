"""JsSIP (npm, installed by scripts/install-test-deps.sh) for a browser page.

The npm package ships CommonJS modules only (its browser bundle is built with browserify,
which the tests do not need): `bundle()` joins the modules JsSIP reaches (its own, `events`,
`debug`'s browser build, `sdp-transform`, `ms`) into one script behind a minimal `require`,
which defines `window.JsSIP`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NODE_MODULES = Path(sys.prefix) / "npm" / "node_modules"
_REQUIRE = re.compile(r"""require\(\s*['"]([^'"]+)['"]\s*\)""")


def available() -> bool:
    return (NODE_MODULES / "jssip" / "package.json").is_file()


def version() -> str:
    return str(json.loads((NODE_MODULES / "jssip" / "package.json").read_text())["version"])


def _package_entry(name: str) -> Path:
    pkg_dir = NODE_MODULES / name
    meta = json.loads((pkg_dir / "package.json").read_text())
    browser = meta.get("browser")
    entry = browser if isinstance(browser, str) else meta.get("main", "index.js")
    return _file(pkg_dir / entry)


def _file(path: Path) -> Path:
    for candidate in (path, path.with_name(path.name + ".js"), path / "index.js"):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(path)


def _resolve(spec: str, base: Path) -> Path:
    if spec.startswith("."):
        return _file(base.parent / spec)
    return _package_entry(spec)


def bundle() -> str:
    """The JsSIP bundle: `<script>` text defining `window.JsSIP`."""
    entry = _package_entry("jssip")
    ids: dict[Path, int] = {}
    deps: dict[Path, dict[str, Path]] = {}
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in ids:
            continue
        ids[path] = len(ids)
        specs = _REQUIRE.findall(path.read_text()) if path.suffix == ".js" else []
        deps[path] = {spec: _resolve(spec, path) for spec in specs}
        todo += deps[path].values()
    parts = [
        "(function(){var defs={},cache={};var process={env:{},browser:true};",
        "function load(id){if(cache[id])return cache[id].exports;var m={exports:{}};"
        "cache[id]=m;defs[id][0](function(s){return load(defs[id][1][s]);},m,m.exports);"
        "return m.exports;}",
    ]
    for path, n in ids.items():
        text = path.read_text()
        body = f"module.exports={text};" if path.suffix == ".json" else text
        table = json.dumps({spec: ids[dep] for spec, dep in deps[path].items()})
        parts.append(f"defs[{n}]=[function(require,module,exports){{\n{body}\n}},{table}];")
    parts.append(f"window.JsSIP=load({ids[entry]});}})();")
    return "\n".join(parts)
