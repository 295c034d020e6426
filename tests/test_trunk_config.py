"""Configuration of trunks (tcp: listeners): local_target and the routing tables' bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlstrace.config import ConfigError, load_config

TRUNK = '[[listener]]\nlisten = "tcp:127.0.0.1:5070"\npeer = "tls:192.0.2.1:5061"\n'


def test_local_target_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(TRUNK + 'local_target = "tcp:127.0.0.1"\n')
    c = load_config(f)
    assert str(c.listener[0].local_target) == "tcp:127.0.0.1:5060"
    assert (
        c.trunk_max_transactions,
        c.trunk_max_dialogs,
        c.trunk_max_table_bytes,
        c.trunk_dialog_idle,
    ) == (32768, 32768, 16 << 20, 3600.0)
    f.write_text(TRUNK)
    assert load_config(f).listener[0].local_target is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (TRUNK + 'local_target = "tls:127.0.0.1:5061"', "listener[0].local_target"),
        (
            '[[listener]]\nlisten = "tls:127.0.0.1:5061"\nlocal_target = "tcp:127.0.0.1:5060"',
            "listener[0].local_target",
        ),
        (
            TRUNK + 'local_target = "tcp:127.0.0.1:5060"\n'
            '[[listener]]\nlisten = "tcp:127.0.0.1:5071"\npeer = "tls:192.0.2.1:5061"\n'
            'local_target = "tcp:127.0.0.1:5080"',
            "listener[1].local_target",
        ),
        ("trunk_max_transactions = 0", "trunk_max_transactions"),
        ("trunk_max_table_bytes = 10", "trunk_max_table_bytes"),
        ("trunk_dialog_idle = 0", "trunk_dialog_idle"),
    ],
)
def test_bad_trunk_settings_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == key, str(e.value)
