"""OpenSIPS `hep_id` destinations."""

from __future__ import annotations

import pytest

from hep.destination import HepDestination, parse_hep_id, parse_hep_ids


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("[homer]10.0.0.5", ("homer", "10.0.0.5", 9060, "udp")),
        ("[homer]10.0.0.5:9061;transport=tcp", ("homer", "10.0.0.5", 9061, "tcp")),
        ("[h]homer.example.com;transport=TLS;version=3", ("h", "homer.example.com", 9060, "tls")),
        (
            "[h] homer.example.com:9443 ; version=3 ; transport = tls ",
            ("h", "homer.example.com", 9443, "tls"),
        ),
        ("[dest][::1]:9060;transport=udp", ("dest", "::1", 9060, "udp")),
        ("[dest][2001:DB8::1]", ("dest", "2001:db8::1", 9060, "udp")),
        ("[a b]127.0.0.1:1", ("a b", "127.0.0.1", 1, "udp")),
        ("[x]127.0.0.1:65535;", ("x", "127.0.0.1", 65535, "udp")),
    ],
)
def test_parse(text: str, want: tuple[str, str, int, str]) -> None:
    d = parse_hep_id(text)
    assert (d.name, d.host, d.port, d.transport, d.version) == (*want, 3)
    assert parse_hep_id(str(d)) == d  # str() writes a hep_id back


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("10.0.0.5:9060", "must start with the destination name"),
        ("[homer", "missing ']'"),
        ("[]10.0.0.5", "name is empty"),
        ("[::1]:9060", r"\[::1\] is read as the name; write \[name\]\[::1\]:9060"),
        ("[homer]", "host is missing"),
        ("[homer]::1", "IPv6 host in brackets"),
        ("[homer][::1", "missing ']' after the IPv6 address"),
        ("[homer][fe80::zz]", "not an IPv6 address"),
        ("[homer][::1]9060", "expected ':PORT'"),
        ("[homer]10.0.0.5:0", "port '0'"),
        ("[homer]10.0.0.5:70000", "port '70000'"),
        ("[homer]10.0.0.5:http", "port 'http'"),
        ("[homer]10.0.0.5;transport=sctp", "transport 'sctp'"),
        ("[homer]10.0.0.5;version=2", "only HEP version 3"),
        ("[homer]10.0.0.5;Transport=tcp", "unknown parameter 'Transport'"),
        ("[homer]10.0.0.5;transport", "must be key=value"),
        ("[homer]10.0.0.5;transport=tcp;transport=udp", "given twice"),
    ],
)
def test_errors_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_hep_id(text)


def test_several_and_duplicate_names() -> None:
    ds = parse_hep_ids(["[a]127.0.0.1", "[b][::1]:9061;transport=tcp"])
    assert [d.name for d in ds] == ["a", "b"]
    assert ds[1].address == "[::1]:9061"
    with pytest.raises(ValueError, match="used twice"):
        parse_hep_ids(["[a]127.0.0.1", "[a]127.0.0.2"])


def test_destination_checks_its_fields() -> None:
    assert HepDestination("x", "h").port == 9060
    with pytest.raises(ValueError, match="transport"):
        HepDestination("x", "h", 9060, "sctp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version 3"):
        HepDestination("x", "h", version=2)
    with pytest.raises(ValueError, match="name"):
        HepDestination("", "h")
