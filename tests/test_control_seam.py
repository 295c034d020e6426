"""The API and /metrics driven against a small in-memory `Control` (no relay, no sockets): the
control seam (`tlstrace.control`) is all the API needs of the process."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import httpx
import pytest

from api.app import create_app
from tlstrace.config import Config
from tlstrace.control import (
    CertificateExpiry,
    CertificateView,
    ConnectionView,
    Control,
    Counters,
    Direction,
    NoDestination,
    Readiness,
    RelayStats,
    ReloadOutcome,
    SenderStats,
    SwitchedBy,
    TraceRules,
    TraceStatus,
    TracingCounters,
    Upstream,
)
from tlstrace.feed import EventFeed

LISTENER = "tls:127.0.0.1:5061"
CERT = CertificateView("/CN=phone", "/CN=ca", "01", "ab" * 32, "2030-01-01T00:00:00+00:00")


def _conn(conn_id: int, direction: Direction, traced: bool) -> ConnectionView:
    return ConnectionView(
        id=conn_id,
        direction=direction,
        state="open",
        listener=LISTENER,
        remote="192.0.2.10:50312",
        local="127.0.0.1:5061",
        sni="sip.example.com",
        server_domain="default",
        tls_version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        alpn=None,
        resumed=False,
        handshake_ms=1.5,
        peer_subject="/CN=phone",
        started=time.time() - 10,
        bytes_in=100,
        bytes_out=200,
        messages_in=1,
        messages_out=2,
        traced=traced,
        registered_until=None,
    )


def _sender(name: str) -> SenderStats:
    return SenderStats(
        name=name,
        transport="udp",
        address="127.0.0.1:9060",
        sent=7,
        dropped=1,
        send_errors=0,
        connect_errors=0,
        reconnects=0,
        bytes_sent=700,
        queue_depth=0,
        queue_bytes=0,
        buffered_bytes=0,
        connected=True,
        state="connected",
        last_error=None,
    )


class MemoryControl:
    """`Control` over a few plain objects, recording what it was asked."""

    def __init__(self, config: Config | None = None) -> None:
        self._config = config or Config()
        self._feed = EventFeed()
        self.conns = {1: _conn(1, "inbound", True), 2: _conn(2, "outbound", False)}
        self.senders = [_sender("hep1")]
        self.enabled = False
        self.until: float | None = None
        self.rules = TraceRules([], "allow")
        self.switched: list[SwitchedBy] = []
        self.closed: list[int] = []
        self.reload_ok = True
        self.ready = True
        self.stats = RelayStats()
        self.stats.accepted[LISTENER] += 3
        self.stats.closed[LISTENER, "eof"] += 2

    @property
    def config(self) -> Config:
        return self._config

    @property
    def feed(self) -> EventFeed:
        return self._feed

    async def trace_state(self) -> TraceStatus:
        return TraceStatus(
            enabled=self.enabled,
            destinations=tuple(s.name for s in self.senders),
            keys=self._config.trace_keys,
            filter_rules=len(self.rules.rules),
            traced_connections=sum(1 for c in self.conns.values() if c.traced),
            until=self.until if self.enabled else None,
        )

    async def switch_tracing(
        self, on: bool, for_seconds: float | None, by: SwitchedBy
    ) -> TraceStatus:
        if on and not self.senders:
            raise NoDestination("no HEP destination is configured (hep_id)")
        self.enabled = on
        self.until = time.time() + for_seconds if on and for_seconds else None
        self.switched.append(by)
        return await self.trace_state()

    async def trace_filter(self) -> TraceRules:
        return self.rules

    async def set_trace_filter(self, rules: TraceRules) -> TraceRules:
        self.rules = rules
        return rules

    async def connections(
        self, direction: Direction | None = None, traced: bool | None = None, limit: int = 1000
    ) -> list[ConnectionView]:
        out = [
            c
            for c in self.conns.values()
            if (direction is None or c.direction == direction)
            and (traced is None or c.traced == traced)
        ]
        return out[:limit]

    async def connection(self, conn_id: int) -> ConnectionView | None:
        conn = self.conns.get(conn_id)
        return None if conn is None else replace(conn, peer_certificate=CERT)

    async def close_connection(self, conn_id: int) -> bool:
        if self.conns.pop(conn_id, None) is None:
            return False
        self.closed.append(conn_id)
        return True

    async def destinations(self) -> list[SenderStats]:
        return list(self.senders)

    async def reload(self, by: SwitchedBy) -> ReloadOutcome:
        if not self.reload_ok:
            return ReloadOutcome(False, "bad file")
        return ReloadOutcome(True, "reloaded", {"log_level": "applied"})

    async def readiness(self) -> Readiness:
        state = "up" if self.ready else "down"
        return Readiness(self.ready, {f"listener {LISTENER}": state})

    async def counters(self) -> Counters:
        open_: dict[tuple[str, str], int] = {(LISTENER, "inbound"): 0, (LISTENER, "outbound"): 0}
        for c in self.conns.values():
            open_[c.listener, c.direction] += 1
        return Counters(
            started=time.time() - 60,
            stats=self.stats,
            open_connections=open_,
            bytes_relayed={(LISTENER, "from_tls"): 100},
            trunk_tables={"transactions": (0, 0), "peer_transactions": (0, 0), "dialogs": (0, 0)},
            upstreams=[Upstream("tcp:127.0.0.1:5060", "backend", True)],
            tracing=TracingCounters(self.enabled, 5, {}, 0),
            destinations=list(self.senders),
            certificates=[CertificateExpiry("server", "default", "/CN=x", 1.9e9)],
        )


Client = httpx.AsyncClient


def drive(control: Control, test: Callable[[Client], Awaitable[None]]) -> None:
    async def run() -> None:
        transport = httpx.ASGITransport(app=create_app(control), client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            await test(c)

    asyncio.run(run())


@pytest.fixture
def control() -> MemoryControl:
    return MemoryControl()


def test_a_memory_control_is_a_control() -> None:
    control: Control = MemoryControl()  # mypy checks the protocol here
    assert control.config.api_token is None


def test_tracing_switch_with_a_limit_and_its_state(control: MemoryControl) -> None:
    async def test(c: Client) -> None:
        r = await c.get("/api/trace")
        assert r.json()["tracing"] == "off" and r.json()["until"] is None
        r = await c.put("/api/trace", json={"tracing": "on", "for_seconds": 600})
        body = r.json()
        assert r.status_code == 200, body
        assert body["tracing"] == "on" and body["destinations"] == ["hep1"]
        assert body["traced_connections"] == 1 and 0 < body["remaining_seconds"] <= 600
        assert control.switched[-1].kind == "api"
        assert control.switched[-1].client == "127.0.0.1:40000"
        control.senders = []
        r = await c.put("/api/trace", json={"tracing": "on"})
        assert r.status_code == 409 and "hep_id" in r.json()["detail"]

    drive(control, test)


def test_filters_round_trip_and_a_bad_rule_is_refused(control: MemoryControl) -> None:
    async def test(c: Client) -> None:
        rules = {"rules": [{"action": "deny", "remote": "10.0.0.0/8"}], "default": "allow"}
        r = await c.put("/api/trace/filters", json=rules)
        assert r.status_code == 200 and r.json()["rules"][0]["remote"] == "10.0.0.0/8"
        assert control.rules.rules[0].action == "deny"
        assert (await c.get("/api/trace")).json()["filter_rules"] == 1
        bad = {"rules": [{"action": "deny", "remote": "nowhere"}]}
        assert (await c.put("/api/trace/filters", json=bad)).status_code == 422
        assert len(control.rules.rules) == 1

    drive(control, test)


def test_connections_listed_shown_and_closed(control: MemoryControl) -> None:
    async def test(c: Client) -> None:
        listed = (await c.get("/api/connections")).json()
        assert [x["id"] for x in listed] == ["1", "2"]
        assert 9 < listed[0]["age_seconds"] < 60 and listed[0]["remote"] == "192.0.2.10:50312"
        assert [x["id"] for x in (await c.get("/api/connections?traced=false")).json()] == ["2"]
        out = (await c.get("/api/connections?direction=outbound&limit=1")).json()
        assert [x["id"] for x in out] == ["2"]
        one = (await c.get("/api/connections/1")).json()
        assert one["peer_certificate"]["subject"] == "/CN=phone"
        assert one["local_certificate"] is None
        assert (await c.get("/api/connections/3")).status_code == 404
        assert (await c.delete("/api/connections/1")).status_code == 204
        assert control.closed == [1]
        assert (await c.delete("/api/connections/1")).status_code == 404

    drive(control, test)


def test_destinations_config_reload_and_readiness(control: MemoryControl) -> None:
    async def test(c: Client) -> None:
        dest = (await c.get("/api/destinations")).json()
        assert dest[0]["name"] == "hep1" and dest[0]["sent"] == 7
        assert (await c.get("/api/config")).json()["api_token"] is None
        r = await c.post("/api/reload")
        assert r.status_code == 200 and r.json()["applied"] == {"log_level": "applied"}
        control.reload_ok = False
        r = await c.post("/api/reload")
        assert r.status_code == 409 and r.json()["message"] == "bad file"
        assert (await c.get("/readyz")).status_code == 200
        control.ready = False
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"] == {f"listener {LISTENER}": "down"}

    drive(control, test)


def test_metrics_and_status_come_from_the_counters(control: MemoryControl) -> None:
    async def test(c: Client) -> None:
        text = (await c.get("/metrics")).text
        for line in (
            f'tlstrace_connections_open{{direction="inbound",listener="{LISTENER}"}} 1.0',
            f'tlstrace_connections_accepted_total{{listener="{LISTENER}"}} 3.0',
            'tlstrace_hep_packets_sent_total{destination="hep1"} 7.0',
            "tlstrace_trace_packets_total 5.0",
            'tlstrace_upstream_up{role="backend",upstream="tcp:127.0.0.1:5060"} 1.0',
            "tlstrace_certificate_not_after_timestamp_seconds"
            '{domain="default",role="server",subject="/CN=x"} 1.9e+09',
        ):
            assert line in text, line
        assert "process_cpu_seconds_total" in text
        status = (await c.get("/api/status")).json()
        assert status["connections_open"] == {"inbound": 1, "outbound": 1}
        assert status["connections_accepted"] == 3 and status["closed"] == {"eof": 2}
        assert 59 < status["uptime_seconds"] < 120 and status["tracing"] == "off"

    drive(control, test)


def test_the_event_stream_reads_the_feed(control: MemoryControl) -> None:
    async def test(c: Client) -> None:
        async def publish() -> None:
            while not control.feed.viewers:
                await asyncio.sleep(0.01)
            control.feed.publish({"event": "closed", "id": "1"})
            await asyncio.sleep(0.05)
            control.feed.close()  # ends the stream

        task = asyncio.create_task(publish())
        r = await c.get("/api/events")
        await task
        assert r.headers["content-type"].startswith("text/event-stream")
        assert '"event":"closed"' in r.text

    drive(control, test)


def test_the_token_is_read_from_the_control_config() -> None:
    control = MemoryControl(Config(api_token="s3cret-token-of-enough-length"))

    async def test(c: Client) -> None:
        assert (await c.get("/api/trace")).status_code == 401
        auth = {"Authorization": "Bearer s3cret-token-of-enough-length"}
        assert (await c.get("/api/trace", headers=auth)).status_code == 200
        assert (await c.get("/healthz")).status_code == 200

    drive(control, test)


def test_what_crosses_the_seam_survives_a_pipe(control: MemoryControl) -> None:
    """Plain data: a supervisor can get it from a worker process (pickled over a pipe)."""

    async def answers() -> list[object]:
        return [
            await control.counters(),
            await control.connection(1),
            await control.trace_state(),
            await control.trace_filter(),
            await control.destinations(),
            await control.readiness(),
            await control.reload(SwitchedBy("api", "test")),
        ]

    for answer in asyncio.run(answers()):
        assert pickle.loads(pickle.dumps(answer)) == answer or isinstance(answer, Counters)
    counters = pickle.loads(pickle.dumps(asyncio.run(control.counters())))
    assert counters.stats.accepted[LISTENER] == 3
