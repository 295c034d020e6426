"""`tlstrace check`: every mistake `run` stops on is found without starting anything, with the
very message `run` gives; a good configuration gets one OK line, and nothing listens, connects
or is written."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.backend import SipBackend
from tests.support.net import free_port
from tests.support.pki import Pki
from tests.support.relay import RelayProcess

MESSAGE = re.compile(r"(?:tlstrace: configuration error|ERROR tlstrace: cannot start): (.*)")


def tlstrace(command: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tlstrace", command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    return {
        "cert": str(a.cert),
        "key": str(a.key),
        "other_key": str(b.key),
        "garbage": str(garbage),
        "ca": str(pki.ca_file),
        "port": str(free_port()),
        "other_ca": str(pki.other_ca_file),
        "a_file": str(a_file),
        "dir": str(tmp_path),
    }


def domain(**keys: str) -> str:
    lines = ["[[server_domain]]", 'name = "default"']
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
    (
        "backend destination",
        LISTENER + '\nbackend = "tcp:127.0.0.1:99999"',
        [],
        "listener[0].backend",
    ),
    (
        "peer destination",
        '[[listener]]\nlisten = "tcp:127.0.0.1:{port}"\npeer = "sip.example"',
        [],
        "listener[0].peer",
    ),
    ("HEP destination", 'hep_id = ["[h]127.0.0.1:9060;transport=sctp"]', [], "hep_id"),
    (
        "unknown trace_destination",
        'hep_id = ["[h]127.0.0.1:9060"]\ntrace_destination = ["x"]',
        [],
        "trace_destination[0]",
    ),
    (
        "certificate missing",
        domain(certificate="/nonexistent.pem", private_key="{key}"),
        [],
        "server_domain[0].certificate",
    ),
    (
        "certificate not PEM",
        domain(certificate="{garbage}", private_key="{key}"),
        [],
        "server_domain[0].certificate",
    ),
    (
        "key does not match",
        domain(certificate="{cert}", private_key="{other_key}"),
        [],
        "server_domain[0].private_key",
    ),
    (
        "chain missing",
        domain(certificate="{cert}", private_key="{key}", chain="/nonexistent-chain.pem"),
        [],
        "server_domain[0].chain",
    ),
    (
        "chain not PEM",
        domain(certificate="{cert}", private_key="{key}", chain="{garbage}"),
        [],
        "server_domain[0].chain",
    ),
    (
        "chain that did not issue the certificate",
        domain(certificate="{cert}", private_key="{key}", chain="{other_ca}"),
        [],
        "server_domain[0].chain",
    ),
    (
        "CA bundle not PEM",
        domain(
            certificate="{cert}", private_key="{key}", ca_list="{garbage}", client_cert="required"
        ),
        [],
        "server_domain[0].ca_list",
    ),
    (
        "cipher list",
        domain(certificate="{cert}", private_key="{key}", ciphers_list="NOPE"),
        [],
        "server_domain[0].ciphers_list",
    ),
    (
        "client certificate missing",
        '[[client_domain]]\nname = "default"\ncertificate = "/nonexistent.pem"\n'
        'private_key = "{key}"',
        [],
        "client_domain[0].certificate",
    ),
    (
        "HEP CA bundle",
        'hep_id = ["[h]127.0.0.1:9061;transport=tls"]\nhep_ca_list = "/nonexistent-ca.pem"',
        [],
        "hep_ca_list",
    ),
    (
        "state_dir cannot hold the generated certificate",
        "",
        ["--state-dir", "{a_file}/sub"],
        "state_dir",
    ),
    (
        "two listeners on one address",
        LISTENER + '\n[[listener]]\nlisten = "tcp:127.0.0.1:{port}"\npeer = "tls:sip.example"',
        [],
        "listener[1].listen",
    ),
    (
        "a wildcard listener and another on its port",
        '[[listener]]\nlisten = "tls:0.0.0.0:{port}"\n' + LISTENER,
        [],
        "listener[1].listen",
    ),
    ("api_listen on a listener's address", "", ["--api", "127.0.0.1:{port}"], "api_listen"),
    (
        "keylog_file in a directory that does not exist",
        'keylog_file = "/nonexistent-dir/keys.log"',
        [],
        "keylog_file",
    ),
    ("keylog_file under a file", 'keylog_file = "{a_file}/keys.log"', [], "keylog_file"),
    ("keylog_file that is a directory", 'keylog_file = "{dir}"', [], "keylog_file"),
]


@pytest.mark.parametrize(
    ("text", "flags", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_check_finds_what_run_stops_on(
    tmp_path: Path, files: dict[str, str], text: str | None, flags: list[str], key: str
) -> None:
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
            f'certificate = "{a.cert}"\nprivate_key = "{a.key}"\nchain = "{pki.ca_file}"\n'
        )
        r = tlstrace("check", "--config", str(config), "--trace")
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert r.stdout.splitlines() == [
            f"tlstrace: configuration OK: {config}: 2 listeners, 2 server identities, "
            f"1 client domain, 1 HEP destination; the self-signed certificate will be "
            f"generated in {state}"
        ]
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


def self_signed(path: Path, days_from: float, days_to: float) -> tuple[Path, Path]:
    """A self-signed certificate valid from `days_from` to `days_to` days from now (either may
    be in the past), and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expiry.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days_from))
        .not_valid_after(now + datetime.timedelta(days=days_to))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_warnings_are_printed_and_the_check_passes(tmp_path: Path) -> None:
    expired = self_signed(tmp_path / "expired", -30, -1)
    soon = self_signed(tmp_path / "soon", -30, 7)
    fine = self_signed(tmp_path / "fine", -30, 60)
    port = free_port()
    cases = [  # (file text, flags, the warning's key and words)
        (
            domain(certificate=str(expired[0]), private_key=str(expired[1])),
            [],
            "server_domain[0].certificate: " + f"{expired[0]} expired on ",
        ),
        (
            domain(certificate=str(soon[0]), private_key=str(soon[1])),
            [],
            "server_domain[0].certificate: " + f"{soon[0]} expires on ",
        ),
        (
            '[[client_domain]]\nname = "default"\n'
            f'certificate = "{expired[0]}"\nprivate_key = "{expired[1]}"',
            [],
            "client_domain[0].certificate: " + f"{expired[0]} expired on ",
        ),
        ("", ["--api", f"0.0.0.0:{free_port()}"], "api_listen: the API listens on 0.0.0.0:"),
        ("trace_on_for_seconds = 600", [], "trace_on_for_seconds: has no effect without trace_on"),
        ("trace_on = true", [], "trace_on: no hep_id destination is configured"),
        ("", ["--trace"], "trace_on: no hep_id destination is configured"),
    ]
    config = tmp_path / "tlstrace.toml"
    for text, flags, warning in cases:
        config.write_text(
            f'api_listen = ""\nstate_dir = "{tmp_path}/state"\n{text}\n'
            + LISTENER.format(port=port)
            + "\n"
        )
        r = tlstrace("check", "--config", str(config), *flags)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("tlstrace: configuration OK: "), r.stdout
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tlstrace: warning: {config}: {warning}"), (
            warning,
            r.stderr,
        )
    # no warning for what is fine: a certificate good for 60 days, a token with the API on
    # every address, trace_on_for_seconds with trace_on and a destination
    config.write_text(
        f'state_dir = "{tmp_path}/state"\napi_listen = "0.0.0.0:{free_port()}"\n'
        'api_token = "t0ken"\ntrace_on = true\ntrace_on_for_seconds = 60\n'
        'hep_id = ["127.0.0.1:9060"]\n'
        + domain(certificate=str(fine[0]), private_key=str(fine[1]))
        + "\n"
        + LISTENER.format(port=port)
        + "\n"
    )
    r = tlstrace("check", "--config", str(config))
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_run_logs_the_warnings_check_prints(
    relay_factory: Callable[..., RelayProcess], backend: SipBackend, tmp_path: Path
) -> None:
    soon = self_signed(tmp_path / "soon", -30, 3)
    relay = relay_factory(
        {
            "trace_on_for_seconds": 600,
            "server_domain": [
                {"name": "default", "certificate": str(soon[0]), "private_key": str(soon[1])}
            ],
            "listener": [RelayProcess.tls_listener(backend.port)],
        }
    )
    log = relay.wait_log("trace_on_for_seconds: has no effect")
    source = str(relay.config_path)
    assert (
        f" WARNING tlstrace: {source}: trace_on_for_seconds: has no effect without "
        "trace_on = true" in log
    )
    assert (
        f" WARNING tlstrace: {source}: server_domain[0].certificate: {soon[0]} expires on " in log
    )
    config = tmp_path / "same.toml"
    config.write_text(relay.config_path.read_text())
    r = tlstrace("check", "--config", str(config))
    assert r.returncode == 0
    assert len(r.stderr.splitlines()) == 2


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_keylog_file_on_a_read_only_file_system(tmp_path: Path) -> None:
    """Not writable: a read-only mount (permissions cannot show it when the tests run as
    root), in a mount namespace of its own."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    config = tmp_path / "tlstrace.toml"
    config.write_text(
        f'api_listen = ""\nstate_dir = "{tmp_path}/state"\n'
        f'keylog_file = "{mnt}/keys.log"\n' + LISTENER.format(port=free_port())
    )
    r = subprocess.run(
        [
            "unshare",
            "-rm",
            "--",
            "sh",
            "-c",
            f'mount -t tmpfs -o ro tmpfs {mnt} && exec "$0" -m tlstrace check --config {config}',
            sys.executable,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "mount" in r.stderr and r.returncode != 2:
        pytest.skip(f"no mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (
        f"tlstrace: configuration error: {config}: keylog_file: "
        f"{mnt}/keys.log: its directory {mnt} is not writable"
    )


SYSTEMD_TOML = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "tlstrace.toml"


def test_the_systemd_configuration_is_checked_ok(tmp_path: Path) -> None:
    """deploy/systemd/tlstrace.toml, the file the README's systemd recipe installs, passes
    `check` without a warning (the generated certificate in the state directory the unit
    gives, here a temporary one), and is what a host needs: API on loopback, the SIP server on
    this machine, tracing off."""
    import os

    from tlstrace.config import load_config

    env = {
        **{k: v for k, v in os.environ.items() if k != "TLSTRACE_API_TOKEN"},
        "XDG_STATE_HOME": str(tmp_path),
    }
    r = subprocess.run(
        [sys.executable, "-m", "tlstrace", "check", "--config", str(SYSTEMD_TOML)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.strip() == (
        f"tlstrace: configuration OK: {SYSTEMD_TOML}: 1 listener, 1 server identity, "
        f"1 client domain, 0 HEP destinations; the self-signed certificate will be generated "
        f"in {tmp_path / 'tlstrace'}"
    )
    config = load_config(SYSTEMD_TOML)
    assert config.api_listen == "127.0.0.1:8080" and config.api_token is None
    assert not config.trace_on and not config.hep_id and not config.keys_wanted
    assert [str(li.backend) for li in config.listener] == ["tcp:127.0.0.1:5060"]
    # the keys it shows commented out are valid once uncommented
    uncommented = "\n".join(
        line.removeprefix("# ") if re.match(r"# [a-z_]+ = ", line) else line
        for line in SYSTEMD_TOML.read_text().splitlines()
    )
    cert, key = self_signed(tmp_path / "own", -1, 90)
    uncommented = uncommented.replace("# [[server_domain]]", "[[server_domain]]")
    uncommented = uncommented.replace("/etc/tlstrace/fullchain.pem", str(cert))
    uncommented = uncommented.replace("/etc/tlstrace/privkey.pem", str(key))
    full = tmp_path / "uncommented.toml"
    full.write_text(uncommented)
    loaded = load_config(full)
    assert loaded.hep_id and loaded.api_allowed_hosts and loaded.keylog_file is not None
    assert loaded.server_domain[0].certificate == cert
    readme = (SYSTEMD_TOML.parent.parent.parent / "README.md").read_text()
    assert "install -D -m 0644 deploy/systemd/tlstrace.toml /etc/tlstrace/tlstrace.toml" in readme
