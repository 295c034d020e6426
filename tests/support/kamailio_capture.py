"""Kamailio `sipcapture` as an independent HEPv3 receiver that stores into SQLite.

    with KamailioCapture(tmp_path / "kam") as kam:       # UDP, TCP and TLS, IPv4 and IPv6
        send HEP to ("127.0.0.1" or "::1", kam.udp_port / kam.tcp_port / kam.tls_port)
        rows = kam.wait_rows("sip_capture", 2)          # list of dicts, one per stored message
        kam.hep_id("tls", "::1")   # "[kamailio][::1]:PORT;transport=tls" (CA: kam.ca_file)
        mark = kam.mark(); ...; kam.wait_rows("sip_capture", 1, since=mark)   # only newer rows

Kamailio 5.6 cannot take HEP over UDP and over TCP in one process: TCP needs the module's
`nonsip_hook`, and with that hook HEP over UDP ends in "core parsing of SIP message failed"
(hep.md §5C, seen again here). And db_sqlite has no busy timeout: two processes writing one
database, or a reader holding it while Kamailio commits, lose rows ("database is locked").
So each database has exactly one writer, in WAL mode (readers never block it): one process
per UDP address ("udp4" on 127.0.0.1, "udp6" on ::1, one receiver each), and one "stream"
process for TCP and TLS on both addresses (one TCP worker). Queries read every database and
tag each row with `instance`.

What Kamailio stores (hep.md §5C): `sip_capture` gets HEP type 1 over any transport;
`logs_capture` gets type 100 over UDP only, and only with a correlation id (0x0011).
Over TCP and TLS Kamailio reads a HEP frame whole into its read buffer: `tcp_rd_buf_size` is
raised to 65536 here, so frames of 65,507 bytes are taken (65,535 is not; with the default,
16,382; a longer frame makes it drop the connection).
Columns: `micro_ts` = sec * 1e6 + usec; `proto` = Kamailio's enum (1 UDP, 2 TCP); `family` 2
or 10; `node` = "<capture_node>:<capture id>"; `correlation_id` = 0x0011, else the Call-ID;
`msg` = the payload (bytes). The processes are in their own process group, capped by
`timeout`, and killed as a group on `stop()`.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.net import free_port, udp_bound
from tests.support.procs import stop_group

MODULES = next(
    (p for p in Path("/usr/lib").glob("*/kamailio/modules") if (p / "sipcapture.so").exists()),
    Path("/usr/lib/x86_64-linux-gnu/kamailio/modules"),
)

SCHEMA = """
CREATE TABLE sip_capture (
  id INTEGER PRIMARY KEY AUTOINCREMENT, date DATETIME, micro_ts BIGINT, method VARCHAR(50),
  reply_reason VARCHAR(100), ruri VARCHAR(200), ruri_user VARCHAR(100), ruri_domain VARCHAR(150),
  from_user VARCHAR(100), from_domain VARCHAR(150), from_tag VARCHAR(64), to_user VARCHAR(100),
  to_domain VARCHAR(150), to_tag VARCHAR(64), pid_user VARCHAR(100), contact_user VARCHAR(120),
  auth_user VARCHAR(120), callid VARCHAR(120), callid_aleg VARCHAR(120), via_1 VARCHAR(256),
  via_1_branch VARCHAR(80), cseq VARCHAR(25), diversion VARCHAR(256), reason VARCHAR(200),
  content_type VARCHAR(256), auth VARCHAR(256), user_agent VARCHAR(256), source_ip VARCHAR(60),
  source_port INTEGER, destination_ip VARCHAR(60), destination_port INTEGER,
  contact_ip VARCHAR(60), contact_port INTEGER, originator_ip VARCHAR(60),
  originator_port INTEGER, correlation_id VARCHAR(256), custom_field1 VARCHAR(120),
  custom_field2 VARCHAR(120), custom_field3 VARCHAR(120), proto INTEGER, family INTEGER,
  rtp_stat VARCHAR(256), type INTEGER, node VARCHAR(125), msg BLOB);
"""
# every column nullable: db_sqlite binds empty strings as NULL
for _table in ("rtcp_capture", "report_capture", "logs_capture"):
    SCHEMA += f"""
CREATE TABLE {_table} (
  id INTEGER PRIMARY KEY AUTOINCREMENT, date DATETIME, micro_ts BIGINT,
  correlation_id VARCHAR(256), source_ip VARCHAR(60), source_port INTEGER,
  destination_ip VARCHAR(60), destination_port INTEGER, proto INTEGER, family INTEGER,
  type INTEGER, node VARCHAR(125), msg BLOB);
"""

TABLES = ("sip_capture", "rtcp_capture", "report_capture", "logs_capture")

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
{listen}
mpath="{modules}/"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "db_sqlite.so"
loadmodule "sipcapture.so"
{tls_module}
modparam("sipcapture", "db_url", "sqlite://{db}")
modparam("sipcapture", "capture_on", 1)
modparam("sipcapture", "hep_capture_on", 1)
modparam("sipcapture", "capture_node", "{node}")
modparam("sipcapture", "insert_retries", 50)
modparam("sipcapture", "insert_retry_timeout", 2)
{hook}
request_route {{
    xlog("L_NOTICE", "HEP-SIP request $rm ci=$ci src=$si:$sp\\n");
    sip_capture("sip_capture");
    drop;
}}
onreply_route {{
    xlog("L_NOTICE", "HEP-SIP reply $rs ci=$ci src=$si:$sp\\n");
    sip_capture("sip_capture");
    drop;
}}
{event_route}
"""

STREAM_EVENT_ROUTE = """event_route[sipcapture:request] {
    xlog("L_NOTICE", "HEP event ptype=$hep(0x00b) capid=$hep(0x00c)\\n");
    if ($hep(0x00b) == 1) { return 1; }
    return 0;
}"""

TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = {cert}
private_key = {key}
"""


class KamailioError(RuntimeError):
    """Kamailio did not start, or did not store what was waited for (the message has its log)."""


def _port_free_everywhere(port: int, kinds: Iterable[int]) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind in kinds:
            with socket.socket(family, kind) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def pick_port(kinds: Iterable[int] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free for every `kind` on both 127.0.0.1 and ::1."""
    kinds = tuple(kinds)
    for _ in range(50):
        port = free_port(socket.AF_INET, kinds[0])
        if _port_free_everywhere(port, kinds):
            return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class _Instance:
    name: str
    root: Path
    db: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    checks: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, host, port)

    def ready(self) -> bool:
        for kind, host, port in self.checks:
            ok = udp_bound(host, port) if kind == "udp" else _tcp_accepts(host, port)
            if not ok:
                return False
        return True


class KamailioCapture:
    """One or two Kamailio processes storing HEP into SQLite (see the module docstring).

    `transports` picks what listens: any of "udp", "tcp", "tls" (tcp and tls share one
    process). Each listens on 127.0.0.1 and, with `ipv6`, on ::1, with the same port number.
    TLS uses `cert`/`key`, or a certificate for 127.0.0.1, ::1 and localhost issued by a
    fresh CA (`ca_file`). Everything lives under `root`.
    """

    def __init__(
        self,
        root: Path,
        *,
        transports: Iterable[str] = ("udp", "tcp", "tls"),
        ipv6: bool = True,
        capture_node: str = "kam",
        cert: Path | None = None,
        key: Path | None = None,
        start_timeout: float = 15.0,
        max_lifetime: float = 600.0,
    ) -> None:
        self.root = root
        self.transports = frozenset(transports)
        unknown = self.transports - {"udp", "tcp", "tls"}
        if unknown or not self.transports:
            raise ValueError(f"transports must be some of udp, tcp, tls, not {sorted(unknown)}")
        self.hosts = ["127.0.0.1", "::1"] if ipv6 else ["127.0.0.1"]
        self.capture_node = capture_node
        self.start_timeout = start_timeout
        self.max_lifetime = max_lifetime
        self.ca_file: Path | None = None
        self.cert, self.key = cert, key
        self.udp_port = self.tcp_port = self.tls_port = 0
        self._instances: list[_Instance] = []

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> KamailioCapture:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if "tls" in self.transports and self.cert is None:
            from tests.support.pki import Pki

            pki = Pki(self.root / "pki")
            leaf = pki.leaf("127.0.0.1", names=["127.0.0.1", "::1", "localhost"], tag="kamailio")
            self.cert, self.key, self.ca_file = leaf.cert, leaf.key, pki.ca_file
        if "udp" in self.transports:
            self.udp_port = pick_port((socket.SOCK_DGRAM,))
            for host in self.hosts:
                self._instances.append(self._write("udp6" if ":" in host else "udp4", [host]))
        if self.transports & {"tcp", "tls"}:
            if "tcp" in self.transports:
                self.tcp_port = pick_port((socket.SOCK_STREAM,))
            if "tls" in self.transports:
                self.tls_port = pick_port((socket.SOCK_STREAM,))
            self._instances.append(self._write("stream", self.hosts))
        try:
            for inst in self._instances:
                self._spawn(inst)
            deadline = time.monotonic() + self.start_timeout
            for inst in self._instances:
                while not inst.ready():
                    assert inst.proc is not None
                    if inst.proc.poll() is not None:
                        raise KamailioError(
                            f"kamailio ({inst.name}) exited with "
                            f"{inst.proc.returncode}:\n{self._tail(inst)}"
                        )
                    if time.monotonic() > deadline:
                        raise KamailioError(
                            f"kamailio ({inst.name}) not ready after "
                            f"{self.start_timeout}s:\n{self._tail(inst)}"
                        )
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process (SIGTERM to the group, SIGKILL after 5 s); idempotent."""
        for inst in self._instances:
            proc = inst.proc
            if proc is None:
                continue
            stop_group(proc)
            inst.proc = None

    def _write(self, name: str, hosts: list[str]) -> _Instance:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        inst = _Instance(name, d, d / "homer.db", d / "kamailio.log")
        if inst.db.exists():
            inst.db.unlink()
        db = sqlite3.connect(inst.db)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()
        listen: list[str] = []
        tls_module = hook = event_route = ""
        udp = name.startswith("udp")
        for host in hosts:
            h = f"[{host}]" if ":" in host else host
            if udp:
                listen.append(f"listen=udp:{h}:{self.udp_port}")
                inst.checks.append(("udp", host, self.udp_port))
            else:
                if "tcp" in self.transports:
                    listen.append(f"listen=tcp:{h}:{self.tcp_port}")
                    inst.checks.append(("tcp", host, self.tcp_port))
                if "tls" in self.transports:
                    listen.append(f"listen=tls:{h}:{self.tls_port}")
                    inst.checks.append(("tls", host, self.tls_port))
        if udp:
            listen.append("disable_tcp=yes")
        else:
            listen += ["tcp_accept_hep3=yes", "tcp_accept_no_cl=yes", "tcp_rd_buf_size=65536"]
            hook = 'modparam("sipcapture", "nonsip_hook", 1)'
            event_route = STREAM_EVENT_ROUTE
            if "tls" in self.transports:
                listen.append("enable_tls=yes")
                (d / "tls.cfg").write_text(TLS_CFG.format(cert=self.cert, key=self.key))
                tls_module = f'loadmodule "tls.so"\nmodparam("tls", "config", "{d / "tls.cfg"}")'
        (d / "kamailio.cfg").write_text(
            CONFIG.format(
                listen="\n".join(listen),
                modules=MODULES,
                tls_module=tls_module,
                db=inst.db,
                node=self.capture_node,
                hook=hook,
                event_route=event_route,
            )
        )
        return inst

    def _spawn(self, inst: _Instance) -> None:
        cmd = [
            "timeout",
            "-s",
            "TERM",
            "-k",
            "5",
            str(int(self.max_lifetime)),
            "kamailio",
            "-f",
            str(inst.root / "kamailio.cfg"),
            "-DD",
            "-E",
            "-m",
            "64",
            "-M",
            "8",
            "-Y",
            str(inst.root),
            "-P",
            str(inst.root / "kamailio.pid"),
        ]
        with open(inst.log, "wb") as log:
            inst.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=inst.root,
            )

    def _tail(self, inst: _Instance, lines: int = 40) -> str:
        try:
            return "\n".join(inst.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def logs(self) -> str:
        """Every instance's log, for assertion messages."""
        return "\n".join(
            f"--- kamailio {i.name} ---\n{self._tail(i, 200)}" for i in self._instances
        )

    # ------------------------------------------------------------------- queries
    def hep_id(
        self, transport: str = "udp", host: str = "127.0.0.1", name: str = "kamailio"
    ) -> str:
        """An OpenSIPS-style hep_id for one of the listeners, for tlstrace's configuration."""
        port = {"udp": self.udp_port, "tcp": self.tcp_port, "tls": self.tls_port}[transport]
        if not port or host not in self.hosts:
            raise ValueError(f"no {transport} listener on {host}")
        h = f"[{host}]" if ":" in host else host
        return f"[{name}]{h}:{port};transport={transport}"

    def mark(self) -> dict[tuple[str, str], int]:
        """The last row id of every (instance, table): pass it as `since` to see newer rows."""
        out = {}
        for inst in self._instances:
            db = sqlite3.connect(inst.db, timeout=5)
            try:
                for table in TABLES:
                    row = db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
                    out[(inst.name, table)] = int(row[0])
            finally:
                db.close()
        return out

    def rows(
        self,
        table: str = "sip_capture",
        where: str = "",
        params: tuple[Any, ...] = (),
        since: dict[tuple[str, str], int] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of `table` from every instance (dicts, with `instance`), by micro_ts then id.

        `where` is an SQL condition ("callid = ?") with `params`; `since` (from `mark()`)
        keeps only newer rows. `msg` is bytes. Empty columns may be NULL or "".
        """
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        out: list[dict[str, Any]] = []
        for inst in self._instances:
            cond = [f"({where})"] if where else []
            args = list(params)
            if since is not None:
                cond.append("id > ?")
                args.append(since.get((inst.name, table), 0))
            sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(cond) if cond else "")
            db = sqlite3.connect(inst.db, timeout=5)  # WAL: reading never blocks Kamailio
            try:
                db.row_factory = sqlite3.Row
                for r in db.execute(sql, args):
                    row = dict(r)
                    if isinstance(row.get("msg"), str):
                        row["msg"] = row["msg"].encode()
                    row["instance"] = inst.name
                    out.append(row)
            finally:
                db.close()
        out.sort(key=lambda r: (r["micro_ts"] or 0, r["instance"], r["id"]))
        return out

    def wait_rows(
        self,
        table: str,
        count: int,
        *,
        where: str = "",
        params: tuple[Any, ...] = (),
        since: dict[tuple[str, str], int] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Poll until `table` has at least `count` matching rows; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(table, where, params, since)
            if len(rows) >= count:
                return rows
            for inst in self._instances:
                if inst.proc is not None and inst.proc.poll() is not None:
                    raise KamailioError(f"kamailio ({inst.name}) died:\n{self._tail(inst)}")
            if time.monotonic() > deadline:
                raise KamailioError(
                    f"{table}: {len(rows)} rows after {timeout}s, expected {count}\n{self.logs()}"
                )
            time.sleep(0.05)
