"""Configuration: defaults in one model, and every mistake stops start-up with one message
that names the file (or flag) and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pki import Pki
from tlstrace.config import Config, ConfigError, Overrides, load_config


def run_tlstrace(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    import tempfile

    state = tempfile.mkdtemp(prefix="tlstrace-state-")
    return subprocess.run(
        [sys.executable, "-m", "tlstrace", "run", "--state-dir", state, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_defaults() -> None:
    c = Config()
    assert str(c.listener[0].listen) == "tls:127.0.0.1:5061"
    assert str(c.listener[0].backend) == "tcp:127.0.0.1:5060"
    assert (c.tls_crlf_pingpong, c.tls_crlf_drop, c.tls_max_msg_chunks) == (True, False, 4)
    assert (c.max_msg_size, c.tcp_connection_lifetime, c.tcp_max_msg_time) == (65535, 120, 4)
    assert c.server_domain[0].min_version == "TLSv1.2"
    assert c.server_domain[0].max_version == "TLSv1.3"
    assert c.server_domain[0].client_cert == "off"
    assert not c.cert_check_on_conn_reusage


def test_flags_override_the_file(tmp_path: Path, pki: Pki) -> None:
    f = tmp_path / "c.toml"
    f.write_text('tls_port = 5071\n[[listener]]\nlisten = "tls:10.0.0.1"\n')
    files = pki.leaf("flags.example")
    c = load_config(
        f,
        Overrides(
            listen=["tls:[::1]:7000", "tls:127.0.0.1"],
            backend="tcp:192.0.2.1:5080",
            cert=files.cert,
            key=files.key,
            ca=pki.ca_file,
        ),
    )
    assert [str(li.listen) for li in c.listener] == ["tls:[::1]:7000", "tls:127.0.0.1:5071"]
    assert {str(li.backend) for li in c.listener} == {"tcp:192.0.2.1:5080"}
    assert c.server_domain[0].certificate == files.cert
    assert c.server_domain[0].ca_list == pki.ca_file
    assert c.client_domain[0].ca_list == pki.ca_file


BAD_FILES = [
    ("tls_port = 'x'", "tls_port"),
    ("no_such_key = 1", "no_such_key"),
    ("tls_max_msg_chunks = 0", "tls_max_msg_chunks"),
    ("tls_crlf_pingpong = 'maybe'", "tls_crlf_pingpong"),
    ('[[listener]]\nlisten = "tls:1.2.3.4:99999"', "listener[0].listen"),
    ('[[listener]]\nlisten = "udp:1.2.3.4:5060"', "listener[0].listen"),
    ('[[listener]]\nlisten = "tcp:127.0.0.1:5070"', "listener[0].peer"),
    ('[[listener]]\nlisten = "tls:127.0.0.1:5061"\ndomains = ["x"]', "listener[0].domains"),
    ('[[server_domain]]\nname = "default"\nclient_cert = "required"', "server_domain[0].ca_list"),
    ('[[server_domain]]\nname = "a"', "server_domain[0].certificate"),
    (
        '[[server_domain]]\nname = "default"\nmin_version = "TLSv1.3"\nmax_version = "TLSv1.2"',
        "server_domain[0].min_version",
    ),
    ('[[server_domain]]\nname = "default"\nmin_version = "SSLv3"', "server_domain[0].min_version"),
    ("listener = [", "(syntax)"),
]


@pytest.mark.parametrize(("text", "key"), BAD_FILES)
def test_bad_file_names_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == key
    assert str(e.value).startswith(f"{f}: {key}: ")


def test_bad_file_stops_startup_with_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("tls_max_msg_chunks = -1\n")
    r = run_tlstrace("--config", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(f) in lines[0] and "tls_max_msg_chunks" in lines[0]


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["--listen", "tls:999.1.1.1.1"], "--listen"),
        (["--listen", "tls:sip.example.com:5061"], "--listen"),
        (["--listen", "tcp:127.0.0.1:5070"], "--listen"),
        (["--backend", "http://x"], "--backend"),
        (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], "--cert"),
        (["--config", "/nonexistent.toml"], "--config"),
    ],
)
def test_bad_flags_stop_startup(args: list[str], where: str) -> None:
    r = run_tlstrace(*args)
    assert r.returncode == 2
    assert where in r.stderr


def test_unusable_certificate_files_stop_startup(tmp_path: Path, pki: Pki) -> None:
    a, b = pki.leaf("a.example"), pki.leaf("b.example")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    cases = [
        ([str(a.cert), str(b.key)], "private_key"),  # key does not match
        ([str(garbage), str(a.key)], "certificate"),
    ]
    for (cert, key), what in cases:
        f = tmp_path / "c.toml"
        f.write_text(
            f'[[server_domain]]\nname = "default"\ncertificate = "{cert}"\n'
            f'private_key = "{key}"\n[[listener]]\nlisten = "tls:127.0.0.1:1"\n'
        )
        r = run_tlstrace("--config", str(f))
        assert r.returncode == 2, r.stderr
        assert f"server_domain[0].{what}" in r.stderr
        assert "PRIVATE KEY" not in r.stderr


def test_port_in_use_names_the_listener(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        f = tmp_path / "c.toml"
        f.write_text(f'state_dir = "{tmp_path}"\n[[listener]]\nlisten = "tls:127.0.0.1:{port}"\n')
        r = run_tlstrace("--config", str(f))
    assert r.returncode == 2
    assert "listener[0].listen" in r.stderr and "in use" in r.stderr


def test_api_port_in_use_names_where_it_was_set(tmp_path: Path) -> None:
    import socket

    from tests.support.net import free_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        flag = run_tlstrace(
            "--listen", f"tls:127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{busy}"
        )
        f = tmp_path / "c.toml"
        f.write_text(
            f'api_listen = "127.0.0.1:{busy}"\n[[listener]]\n'
            f'listen = "tls:127.0.0.1:{free_port()}"\n'
        )
        file = run_tlstrace("--config", str(f))
    assert flag.returncode == 2 and file.returncode == 2
    assert f"--api: api_listen: cannot listen on 127.0.0.1:{busy}" in flag.stderr, flag.stderr
    error = next(ln for ln in flag.stderr.splitlines() if "cannot listen" in ln)
    assert "defaults" not in error  # (the start-up line says "embedded defaults", rightly)
    assert f"{f}: api_listen: cannot listen on 127.0.0.1:{busy}" in file.stderr, file.stderr


def test_hep_id_name_is_optional_in_the_file_too(tmp_path: Path) -> None:
    from tlstrace.preflight import build_senders

    f = tmp_path / "c.toml"
    f.write_text(
        'hep_id = ["10.0.0.5:9060;transport=udp", "[homer]10.0.0.6", "[::1]:9061",\n'
        '          "[hep1]10.0.0.7;transport=tcp"]\n'
    )
    c = load_config(f)
    assert c.hep_id == [
        "[hep2]10.0.0.5:9060;transport=udp",
        "[homer]10.0.0.6",
        "[hep3][::1]:9061",
        "[hep1]10.0.0.7;transport=tcp",
    ]
    senders = {s.dest.name: s.dest for s in build_senders(c)}
    assert (senders["hep2"].host, senders["hep3"].host, senders["hep3"].port) == (
        "10.0.0.5",
        "::1",
        9061,
    )
    # --hep adds to them, the names never clash
    c = load_config(f, Overrides(hep=["192.0.2.1", "[trunk]192.0.2.2"]))
    assert c.hep_id[4:] == ["[hep4]192.0.2.1", "[trunk]192.0.2.2"]
    assert len({d.split("]")[0] for d in c.hep_id}) == 6
    # a bad one still names the file and the key
    f.write_text('hep_id = ["10.0.0.5:99999"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == "hep_id" and "99999" in e.value.problem


def test_trace_destination_may_be_one_string(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('hep_id = ["[homer]10.0.0.5", "[backup]10.0.0.6"]\ntrace_destination = "homer"\n')
    c = load_config(f)
    assert c.trace_destination == ["homer"]
    from tlstrace.preflight import build_senders

    assert [s.dest.name for s in build_senders(c)] == ["homer"]
    f.write_text('hep_id = ["[homer]10.0.0.5"]\ntrace_destination = ["homer"]\n')
    assert load_config(f).trace_destination == ["homer"]
    f.write_text('hep_id = ["[homer]10.0.0.5"]\ntrace_destination = "nope"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == "trace_destination[0]" and "no hep_id named 'nope'" in e.value.problem
