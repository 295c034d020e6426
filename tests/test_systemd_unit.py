"""deploy/systemd/tlstrace.service checked by systemd itself (Debian's systemd-analyze, which
needs no systemd running as PID 1): `verify` accepts it, alone and with the low-ports drop-in,
without a single warning; `security --offline` rates its hardening; and the same checks reject
deliberately broken copies, so a pass means something."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tlstrace.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "tlstrace.service"
DROP_IN = ROOT / "deploy" / "systemd" / "low-ports.conf"
#: where the unit expects tlstrace (a virtual environment, see the unit's comments)
INSTALLED = "/opt/tlstrace/bin/tlstrace"
#: systemd's exposure score, 0 (locked down) to 10 (unprotected), times ten
MAX_EXPOSURE = 20

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed: make deps"
)


def entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order (keys may repeat)."""
    out, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def service(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for section, key, value in entries(text):
        if section == "Service":
            values.setdefault(key, []).append(value)
    return values


def here(tmp_path: Path, text: str, drop_in: str | None = None) -> Path:
    """The unit in tmp_path, run by this checkout's tlstrace instead of /opt/tlstrace's
    (verify checks that the program exists); nothing else changes."""
    tlstrace = Path(sys.executable).parent / "tlstrace"
    assert tlstrace.is_file()
    unit = tmp_path / "tlstrace.service"
    unit.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={tlstrace} "))
    if drop_in is not None:
        (tmp_path / "tlstrace.service.d").mkdir()
        (tmp_path / "tlstrace.service.d" / "low-ports.conf").write_text(drop_in)
    return unit


def analyze(*args: str) -> tuple[int, str]:
    r = subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).strip()


def verify(unit: Path) -> tuple[int, str]:
    """systemd-analyze verify; it exits 0 on some mistakes (an unknown key, a bad value) and
    only warns, so a clean unit has no output either."""
    return analyze("verify", str(unit))


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    assert f"ExecStart={INSTALLED} " in UNIT.read_text()
    assert verify(here(tmp_path, UNIT.read_text())) == (0, "")


def test_the_unit_verifies_with_the_low_ports_drop_in(tmp_path: Path) -> None:
    unit = here(tmp_path, UNIT.read_text(), DROP_IN.read_text())
    assert verify(unit) == (0, "")
    drop = service(DROP_IN.read_text())
    assert drop == {
        "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
        "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
    }


def test_broken_units_fail_the_same_checks(tmp_path: Path) -> None:
    text = UNIT.read_text()
    broken = {
        "a misspelt key": text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
        "a bad value": text.replace("ProtectSystem=strict", "ProtectSystem=sometimes"),
        "a missing program": text.replace(
            f"ExecStart={INSTALLED} ", "ExecStart=/nonexistent/tlstrace "
        ),
        "a key in the wrong section": text.replace("[Install]\n", "[Install]\nUser=root\n"),
    }
    for n, (what, bad) in enumerate(broken.items()):
        assert bad != text, what
        d = tmp_path / str(n)
        d.mkdir()
        unit = here(d, bad)
        assert verify(unit) != (0, ""), f"verify accepted {what}"
    d = tmp_path / "drop-in"
    d.mkdir()
    unit = here(d, text, DROP_IN.read_text().replace("AmbientCapabilities", "AmbientCapabilitys"))
    assert verify(unit) != (0, ""), "verify accepted a misspelt key in the drop-in"


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    s = service(UNIT.read_text())
    assert s["DynamicUser"] == ["yes"] or s.get("User", ["root"])[0] not in ("root", "0")
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "tlstrace"),
        # no capability at all unless the drop-in grants one
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ]:
        assert s.get(key) == [value], key
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # the generated certificate goes to the StateDirectory (%S/tlstrace)
    assert "XDG_STATE_HOME=%S" in s["Environment"]
    # ExecStart is a command line tlstrace accepts
    argv = shlex.split(s["ExecStart"][0])
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and str(args.config) == "/etc/tlstrace/tlstrace.toml"
    # systemd's own rating of the sandbox, with and without the drop-in
    for n, drop_in in enumerate([None, DROP_IN.read_text()]):
        d = tmp_path / str(n)
        d.mkdir()
        unit = here(d, UNIT.read_text(), drop_in)
        rc, out = analyze("security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", str(unit))
        assert rc == 0, out.splitlines()[-1]
    # and the rating does tell a bare unit from a hardened one
    bare = tmp_path / "bare"
    bare.mkdir()
    bare_text = "\n".join(
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(
            ("Protect", "Private", "Restrict", "SystemCall", "Capability", "NoNew")
        )
    )
    rc, out = analyze(
        "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", str(here(bare, bare_text))
    )
    assert rc != 0, out.splitlines()[-1]
