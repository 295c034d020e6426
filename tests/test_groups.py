"""Key-exchange groups (`groups` of server and client domains): checked when the configuration
is read, set on the real contexts, and obeyed by OpenSSL in handshakes (in memory here; over
the wire with `openssl s_client` in tests/hardening/test_key_exchange.py)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pki import Pki
from tlstrace.config import ClientDomain, Config, ConfigError, ServerDomain, load_config
from tlstrace.config.load import validate
from tlstrace.tls import groups
from tlstrace.tls.contexts import build_client_context, build_server_identity
from tlstrace.tls.failures import HandshakeFailure, classify

DEFAULT = ["X25519", "P-256", "P-384"]
ELSEWHERE = ["X448", "P-521", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"]


def test_defaults_are_cheap_elliptic_curves() -> None:
    c = Config()
    assert c.server_domain[0].groups == DEFAULT
    assert c.client_domain[0].groups == DEFAULT
    assert groups.finite_field(DEFAULT) == []
    assert groups.finite_field(["X25519", "ffdhe8192"]) == ["ffdhe8192"]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            '[[server_domain]]\nname = "default"\ngroups = ["X25519", "ffdhe9999"]',
            "server_domain[0].groups",
            "'ffdhe9999' is not a group",
        ),
        ('[[server_domain]]\nname = "default"\ngroups = []', "server_domain[0].groups", "empty"),
        (
            '[[server_domain]]\nname = "default"\ngroups = ["P-256", "prime256v1"]',
            "server_domain[0].groups",
            "twice",
        ),
        (
            '[[server_domain]]\nname = "default"\ngroups = ["X25519:P-256"]',
            "server_domain[0].groups",
            "not a group",
        ),
        (
            '[[client_domain]]\nname = "trunk"\ngroups = ["curve25519"]',
            "client_domain[0].groups",
            "not a group",
        ),
    ],
)
def test_a_bad_group_names_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == key
    assert str(e.value).startswith(f"{f}: {key}: ")
    assert words in e.value.problem


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_bad_group_stops_startup_with_one_line(tmp_path: Path, command: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[[server_domain]]\nname = "default"\ngroups = ["X25519", "P-265"]\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tlstrace",
            command,
            "--state-dir",
            str(tmp_path / "state"),
            "--config",
            str(f),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{f}: server_domain[0].groups: 'P-265' is not a group" in lines[0]


def test_domains_sharing_a_listener_may_differ(pki: Pki) -> None:
    # the domain is chosen from the ClientHello's SNI before OpenSSL reads the key share
    # (tests/hardening/test_key_exchange.py checks it over the wire)
    b = pki.leaf("b.example")
    c = validate(
        {
            "server_domain": [
                {"name": "default", "groups": ["P-384"]},
                {
                    "name": "b",
                    "certificate": str(b.cert),
                    "private_key": str(b.key),
                    "match_sip_domain": ["b.example"],
                },
            ]
        },
        "c.toml",
    )
    assert [d.groups for d in c.server_domain] == [["P-384"], DEFAULT]


def test_aliases_and_openssls_spelling_are_accepted() -> None:
    for names in (["prime256v1", "secp384r1"], ["x25519"], ["ffdhe2048", "X448", "P-521"]):
        ServerDomain(name="default", groups=names)
        ClientDomain(name="default", groups=names)


# -- what OpenSSL then does ---------------------------------------------------------------------


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """Run a handshake in memory; None when it worked, else the server's failure reason."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj, out, peer_in in (("c", cli, c_out, s_in), ("s", srv, s_out, c_in)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as e:
                    if name == "s":
                        return classify(e)[0].value
                    return f"client: {e.reason}"
            peer_in.write(out.read())
        if done["s"] and done["c"]:
            return None
    raise AssertionError("the handshake did not end")


@pytest.fixture(scope="module")
def server_ctx(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    # an RSA certificate: in TLS 1.2 a client must also offer the curve of an ECDSA one, and
    # these clients offer one group only
    files = pki.leaf("localhost", names=["localhost"], kind="rsa", tag="localhost-rsa")
    config = Config(state_dir=tmp_path_factory.mktemp("state"))
    domain = ServerDomain(name="default", certificate=files.cert, private_key=files.key)
    return build_server_identity(config, domain, "server_domain[0]", "test").context


def _client(curve: str, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    """A stdlib client offering exactly one group (`set_ecdh_curve` sets one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ecdh_curve(curve)
    return ctx


@pytest.mark.parametrize("group", ["X25519", "prime256v1", "secp384r1"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_the_default_groups_negotiate(
    server_ctx: ssl.SSLContext, group: str, version: ssl.TLSVersion
) -> None:
    assert _handshake(server_ctx, _client(group, version)) is None


@pytest.mark.parametrize("group", ["X448", "secp521r1", "ffdhe2048", "ffdhe8192"])
def test_other_groups_fail_the_handshake(server_ctx: ssl.SSLContext, group: str) -> None:
    assert _handshake(server_ctx, _client(group)) == HandshakeFailure.NO_SHARED_GROUP.value
    if not group.startswith("ffdhe"):  # TLS 1.2 has no ECDHE curve left: no cipher either
        assert (
            _handshake(server_ctx, _client(group, ssl.TLSVersion.TLSv1_2))
            == HandshakeFailure.NO_SHARED_CIPHER.value
        )


def test_a_domain_may_ask_for_finite_field_groups(pki: Pki, tmp_path: Path) -> None:
    files = pki.leaf("localhost", names=["localhost"])
    domain = ServerDomain(
        name="default", certificate=files.cert, private_key=files.key, groups=["ffdhe2048"]
    )
    ctx = build_server_identity(
        Config(state_dir=tmp_path), domain, "server_domain[0]", "test"
    ).context
    assert _handshake(ctx, _client("ffdhe2048")) is None
    assert _handshake(ctx, _client("X25519")) == HandshakeFailure.NO_SHARED_GROUP.value


def test_client_domains_offer_their_groups(server_ctx: ssl.SSLContext) -> None:
    only_x448 = build_client_context(
        ClientDomain(name="t", verify_cert=False, groups=["X448"]), "client_domain[0]", "test"
    )
    assert _handshake(server_ctx, only_x448) == HandshakeFailure.NO_SHARED_GROUP.value
    default = build_client_context(
        ClientDomain(name="t", verify_cert=False), "client_domain[0]", "test"
    )
    assert _handshake(server_ctx, default) is None


def test_the_context_pointer_is_checked_before_use() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    groups.set_groups(ctx, ["P-384"])  # matches: no error
    with pytest.raises(TypeError):
        groups.set_groups(object(), ["P-384"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        groups.apply(ctx, ["nope"], lambda why: ConfigError("f", "k.groups", why))
    assert e.value.key == "k.groups"


def test_an_ssl_module_laid_out_otherwise_stops_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the SSL_CTX cannot be reached safely (another Python, another layout), reading
    the configuration fails on the groups key instead of running with OpenSSL's defaults."""

    def unusable() -> groups._LibSsl:
        raise groups.GroupsError("ssl.SSLContext does not have the layout this code expects")

    monkeypatch.setattr(groups, "_lib", unusable)
    monkeypatch.setattr(groups, "_good", set())
    with pytest.raises(ConfigError) as e:
        validate(
            {"server_domain": [{"name": "default"}], "client_domain": [{"name": "default"}]},
            "c.toml",
        )
    assert e.value.key == "server_domain[0].groups"
    assert "layout" in e.value.problem
    with pytest.raises(ConfigError) as e:
        validate({}, "c.toml")  # the built-in domains: no index to name
    assert e.value.key == "groups"
    # and building a context (names checked before) fails the same way
    with pytest.raises(ConfigError) as e:
        groups.apply(
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
            ["X25519"],
            lambda why: ConfigError("c.toml", "server_domain[0].groups", why),
        )
    assert "layout" in e.value.problem
