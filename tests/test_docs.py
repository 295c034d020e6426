"""The README documents every configuration key, flag, endpoint and metric."""

from __future__ import annotations

import re
from pathlib import Path

from tlstrace.cli import build_parser
from tlstrace.config.model import ClientDomain, Config, Listener, ServerDomain, TraceRule

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    for model in (Config, Listener, ServerDomain, ClientDomain, TraceRule):
        for name in model.model_fields:
            assert f"`{name}`" in README or f"{name} =" in README, f"{model.__name__}.{name}"


def test_every_run_flag_is_documented() -> None:
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    for action in run._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in README, flag


def test_every_metric_is_documented() -> None:
    source = (Path(__file__).parent.parent / "tlstrace" / "metrics.py").read_text()
    names = set(re.findall(r'"(tlstrace_[a-z_]+)"', source))
    assert len(names) > 20
    for name in names:
        documented = name if name != "tlstrace_build" else "tlstrace_build_info"
        assert documented in README, name


def test_every_endpoint_is_documented() -> None:
    source = (Path(__file__).parent.parent / "api" / "app.py").read_text()
    for method, path in re.findall(r'@app\.(get|put|post|delete)\("([^"]+)"', source):
        assert f"`{method.upper()} {path.replace('{conn_id}', '{id}')}`" in README, path


def test_the_session_record_example_has_the_keys_a_record_has() -> None:
    import datetime as dt
    import json

    from tlstrace.relay.connection import Connection
    from tlstrace.tls.certinfo import CertInfo
    from tlstrace.trace.events import session_record, session_record_prefix

    section = README.split("**Session records**", 1)[1]
    example = json.loads(re.search(r"```json\n(.+?)\n```", section, re.DOTALL)[1])  # type: ignore[index]
    conn = Connection("inbound", ("192.0.2.10", 50312), ("192.0.2.1", 5061), "tls:x:5061")
    conn.local_cert = CertInfo("/CN=a", "/CN=a", "01", "ab", dt.datetime.now(dt.UTC))
    record = json.loads(session_record(session_record_prefix(conn, keys=False), b"c@x"))
    assert list(example) == list(record)
    assert list(example["local_certificate"]) == list(record["local_certificate"])
    # and the prose names them all, keylog (with trace_keys) included
    with_keys = json.loads(session_record(session_record_prefix(conn, keys=True), b"c@x"))
    prose = section.split("```json", 1)[0]
    for key in [*with_keys, *with_keys["local_certificate"]]:
        assert f"`{key}`" in prose or f'"{key}"' in prose, key


def test_the_hep_listen_fields_are_the_ones_it_prints() -> None:
    from hep.codec import HepDecodeError, HepPacket
    from hep.listen import Received, error_json, packet_json

    para = README.split("Each line `hep-listen` prints", 1)[1].split("\n\n", 1)[0]
    packet = HepPacket(
        src_ip="192.0.2.1",
        dst_ip="192.0.2.2",
        src_port=5061,
        dst_port=5060,
        ts_sec=1,
        ts_usec=0,
        ip_proto=6,
        payload=b"x",
    )
    info = Received("udp", ("127.0.0.1", 9), 10, 0.0)
    documented = re.findall(r"`([a-z_]+)`", para.split("Data that is not", 1)[0])
    printed = list(packet_json(packet, info))
    assert [k for k in documented if k in printed] == printed  # all of them, in order
    errors = re.findall(r"`([a-z_]+)`", para.split("Data that is not", 1)[1])
    assert errors == list(error_json(HepDecodeError("bad"), b"x", info))
