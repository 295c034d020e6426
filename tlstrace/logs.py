"""Logging set-up: `log_format = "text"` (one human line per record) or `"json"` (one JSON
object per line, for log collectors).

JSON lines always start with the keys `time` (UTC, ISO 8601 with milliseconds), `level`
(`debug`, `info`, `warning`, `error`, `critical`), `logger` and `message`; structured fields
follow where the line has them (`conn`, `direction`, `remote`, `reason` on connection lines,
`tracing`, `switched_by`, `client` on tracing switches, `version`, `openssl`, `config` on the
start-up line), and `exception` with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hep.address import join_host_port
from tlstrace.config.model import LogFormat

if TYPE_CHECKING:
    from tlstrace.relay.connection import Connection

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: attributes every LogRecord has; anything else on a record came from `extra=`
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        sec = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", sec) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


_handler: logging.Handler | None = None


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at `level` in `fmt`."""
    global _handler
    _handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_handler)
    root.setLevel(getattr(logging, level.upper()))
    set_format(fmt)


def set_format(fmt: LogFormat) -> None:
    """Write the lines from now on in `fmt` (a reload can change it). In JSON, Python warnings
    and an uncaught exception are logged records too, so that every line is one JSON
    object."""
    if _handler is None:
        return
    _handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.captureWarnings(fmt == "json")
    sys.excepthook = _log_uncaught if fmt == "json" else sys.__excepthook__


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("tlstrace").critical("uncaught exception: %s", exc, exc_info=(kind, exc, tb))


def conn_fields(conn: Connection) -> dict[str, object]:
    """The structured fields of a log line about one connection."""
    return {
        "conn": str(conn.id),
        "direction": conn.direction,
        "remote": join_host_port(*conn.remote),
    }
