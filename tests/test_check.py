"""`tlstrace check`: every mistake `run` stops on is found without starting anything, with the
very message `run` gives; a good configuration gets one OK line, and nothing listens, connects
or is written."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.pki import Pki

MESSAGE = re.compile(r"(?:tlstrace: configuration error|ERROR tlstrace: cannot start): (.*)")


def tlstrace(command: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlstrace", command, *args],
                          capture_output=True, text=True, timeout=timeout)


def message(r: subprocess.CompletedProcess[str]) -> str:
    """The one problem line of a failed `run` or `check`, without its prefix."""
    found = MESSAGE.findall(r.stderr)
    assert len(found) == 1, r.stderr
    return str(found[0])


@pytest.fixture
def files(tmp_path: Path, pki: Pki) -> dict[str, str]:
    a, b = pki.leaf("a.example", tag="check-a"), pki.leaf("b.example", tag="check-b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return {"cert": str(a.cert), "key": str(a.key), "other_key": str(b.key),
            "garbage": str(garbage), "ca": str(pki.ca_file), "port": str(free_port()),
            "other_ca": str(pki.other_ca_file),
            "a_file": str(a_file), "dir": str(tmp_path)}


def domain(**keys: str) -> str:
    lines = ['[[server_domain]]', 'name = "default"']
    lines += [f'{k} = "{v}"' for k, v in keys.items()]
    return "\n".join(lines)


LISTENER = '[[listener]]\nlisten = "tls:127.0.0.1:{port}"'

# (what is wrong, file text, flags, the key the message names)
CASES = [
    ("no such file", None, ["--config", "/nonexistent/tlstrace.toml"], "--config"),
    ("--config is a directory", None, ["--config", "{dir}"], "--config"),
    ("api_token with spaces around it", 'api_token = " s3cret "', [], "api_token"),
    ("api_token empty", 'api_token = ""', [], "api_token"),
    ("TOML syntax", "listener = [", [], "(syntax)"),
    ("unknown key", "colour = 1", [], "colour"),
    ("value out of range", "tls_max_msg_chunks = 0", [], "tls_max_msg_chunks"),
    ("bad --listen", "", ["--listen", "tcp:127.0.0.1:5070"], "listener"),
    ("bad --backend", "", ["--backend", "http://x"], "backend"),
    ("--cert without --key", "", ["--cert", "{cert}"], "cert"),
    ("--cert file missing", "", ["--cert", "/nonexistent.pem", "--key", "{key}"], "cert"),
    ("backend destination", LISTENER + '\nbackend = "tcp:127.0.0.1:99999"', [],
     "listener[0].backend"),
    ("peer destination", '[[listener]]\nlisten = "tcp:127.0.0.1:{port}"\npeer = "sip.example"',
     [], "listener[0].peer"),
    ("HEP destination", 'hep_id = ["[h]127.0.0.1:9060;transport=sctp"]', [], "hep_id"),
    ("unknown trace_destination", 'hep_id = ["[h]127.0.0.1:9060"]\ntrace_destination = ["x"]',
     [], "trace_destination[0]"),
    ("certificate missing", domain(certificate="/nonexistent.pem", private_key="{key}"), [],
     "server_domain[0].certificate"),
    ("certificate not PEM", domain(certificate="{garbage}", private_key="{key}"), [],
     "server_domain[0].certificate"),
    ("key does not match", domain(certificate="{cert}", private_key="{other_key}"), [],
     "server_domain[0].private_key"),
    ("chain missing", domain(certificate="{cert}", private_key="{key}",
                             chain="/nonexistent-chain.pem"), [], "server_domain[0].chain"),
    ("chain not PEM", domain(certificate="{cert}", private_key="{key}", chain="{garbage}"), [],
     "server_domain[0].chain"),
    ("chain that did not issue the certificate",
     domain(certificate="{cert}", private_key="{key}", chain="{other_ca}"), [],
     "server_domain[0].chain"),
    ("CA bundle not PEM", domain(certificate="{cert}", private_key="{key}", ca_list="{garbage}",
                                 client_cert="required"), [], "server_domain[0].ca_list"),
    ("cipher list", domain(certificate="{cert}", private_key="{key}", ciphers_list="NOPE"), [],
     "server_domain[0].ciphers_list"),
    ("client certificate missing",
     '[[client_domain]]\nname = "default"\ncertificate = "/nonexistent.pem"\n'
     'private_key = "{key}"', [], "client_domain[0].certificate"),
    ("HEP CA bundle", 'hep_id = ["[h]127.0.0.1:9061;transport=tls"]\n'
                      'hep_ca_list = "/nonexistent-ca.pem"', [], "hep_ca_list"),
    ("state_dir cannot hold the generated certificate", "", ["--state-dir", "{a_file}/sub"],
     "state_dir"),
]


@pytest.mark.parametrize(("text", "flags", "key"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_check_finds_what_run_stops_on(tmp_path: Path, files: dict[str, str],
                                       text: str | None, flags: list[str], key: str) -> None:
    args = [f.format(**files) for f in flags]
    if text is not None:
        config = tmp_path / "tlstrace.toml"
        body = text.format(**files)
        if "[[listener]]" not in body and not any(a.startswith("--listen") for a in args):
            body = body + "\n" + LISTENER.format(**files)
        config.write_text(f'api_listen = ""\nstate_dir = "{tmp_path}/state"\n{body}\n')
        args = ["--config", str(config), *args]
    checked = tlstrace("check", *args)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stdout == ""
    lines = checked.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlstrace: configuration error: "), lines
    assert f"{key}: " in lines[0]
    assert "PRIVATE KEY" not in checked.stderr
    ran = tlstrace("run", *args)
    assert ran.returncode == 2, ran.stderr
    assert message(ran) == message(checked)
    assert "Traceback" not in ran.stderr


def test_good_configuration_is_ok_and_nothing_starts(tmp_path: Path, pki: Pki) -> None:
    a = pki.leaf("ok.example", tag="check-ok")
    with socket.socket() as taken, socket.socket() as collector:
        # a listener port somebody else holds: check does not listen, so it cannot tell
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a HEP collector over TCP: check starts no sender, so nothing connects to it
        collector.bind(("127.0.0.1", 0))
        collector.listen()
        collector.settimeout(0.5)
        hep_port = collector.getsockname()[1]
        state = tmp_path / "state"
        config = tmp_path / "tlstrace.toml"
        config.write_text(
            f'state_dir = "{state}"\nhep_id = ["[homer]127.0.0.1:{hep_port};transport=tcp"]\n'
            f'[[listener]]\nlisten = "tls:127.0.0.1:{port}"\n'
            f'[[listener]]\nlisten = "tcp:127.0.0.1:{free_port()}"\n'
            f'peer = "tls:sip.example.com:5061"\n'
            f'[[server_domain]]\nname = "default"\n'
            f'[[server_domain]]\nname = "ok"\nmatch_sip_domain = ["ok.example"]\n'
            f'certificate = "{a.cert}"\nprivate_key = "{a.key}"\nchain = "{pki.ca_file}"\n')
        r = tlstrace("check", "--config", str(config), "--trace")
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert r.stdout.splitlines() == [
            f"tlstrace: configuration OK: {config}: 2 listeners, 2 server identities, "
            f"1 client domain, 1 HEP destination; the self-signed certificate will be "
            f"generated in {state}"]
        with pytest.raises(TimeoutError):
            collector.accept()
    assert not state.exists()  # nothing written, the generated certificate neither


def test_check_uses_an_existing_generated_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "default-cert.pem").write_text("not a certificate\n")
    (state / "default-key.pem").write_text("not a key\n")
    r = tlstrace("check", "--state-dir", str(state), "--api", "off")
    assert r.returncode == 2
    assert "server_domain[0].certificate: OpenSSL cannot load" in r.stderr
