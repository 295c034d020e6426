"""Tracing pieces without sockets: a reload's effect on open connections' tracers, and the
key-log file's error count."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tlstrace.config.load import validate
from tlstrace.relay.connection import Connection
from tlstrace.trace.keyfile import KeyLogFile
from tlstrace.trace.tracer import ConnectionTracer, TraceManager

INVITE = b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: units-1\r\nContent-Length: 0\r\n\r\n"


def test_a_reload_that_turns_session_records_on_completes_open_tracers() -> None:
    """trace_sessions and trace_keys both changed by one reload: the open connection's tracer
    gets its session record prefix and template together, so its next message sends the
    record instead of failing on the relay's read path."""
    config = validate({"trace_sessions": False, "hep_id": ["[h]127.0.0.1:9"]}, "test")
    relay: Any = SimpleNamespace(tls_legs={})
    manager = TraceManager(config, [], relay)
    conn = Connection("inbound", ("192.0.2.1", 5061), ("127.0.0.1", 5061), "tls:127.0.0.1:5061")
    tracer = ConnectionTracer(manager, conn)
    relay.tls_legs[conn.id] = SimpleNamespace(tracer=tracer)
    tracer.message(INVITE, True, time.time())
    assert manager.packets == 1  # the message only

    manager.apply_config(config.model_copy(update={"trace_sessions": True, "trace_keys": True}))
    tracer.message(INVITE, True, time.time())
    assert manager.packets == 3  # the message and its call's session record

    manager.apply_config(config)  # and off again: messages only
    tracer.message(INVITE.replace(b"units-1", b"units-2"), True, time.time())
    assert manager.packets == 4


def test_key_log_file_counts_one_error_per_unwritten_handshake(tmp_path: Path) -> None:
    broken = KeyLogFile(tmp_path / "missing-dir" / "keys.log")
    broken.write(["CLIENT_RANDOM 00 11"])  # the open fails
    broken.write(["CLIENT_RANDOM 22 33"])  # within the retry wait
    assert (broken.errors, broken.lines_written) == (2, 0)

    good = KeyLogFile(tmp_path / "keys.log")
    good.write(["CLIENT_RANDOM 00 11", "CLIENT_RANDOM 22 33"])
    good.close()
    assert (good.errors, good.lines_written) == (0, 2)
    assert stat.S_IMODE((tmp_path / "keys.log").stat().st_mode) == 0o600
