"""The benchmark's bookkeeping, from canned results (nothing timed, no sockets): the tables name
each line's regime and pair each target with HAProxy by repetition, the verdicts use issue 10's
targets, the plot is drawn from a results file, generator processes' results merge, and the TCP
HEP sink counts packets across arbitrary reads; the load generator's WebSocket side frames and
reads as RFC 6455 says (checked against wsproto), and the WSS line's ratio is to tlstrace's TLS
line, not to HAProxy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench import plot, report
from bench.loadgen import hist_percentiles, histogram
from bench.run import Job, merge, paced_case, split_windows, summarize
from bench.targets import REGIMES
from bench.tcp_sink import StreamCounter


def _run(rep: int, cpu_us: float, rate: float = 1000.0, **extra: Any) -> dict[str, Any]:
    return {
        "rep": rep,
        "rate": rate,
        "cpu_us_per_msg": cpu_us,
        "cpu_us_per_round_trip": 2 * cpu_us,
        "relay_core_pct": 50.0,
        "load_core_pct": 30.0,
        "other_pct": 0.0,
        "errors": 0,
        "latency_ms": {"p50": 1.0, "p99": 2.0, "p99.9": 3.0, "max": 4.0},
        **extra,
    }


def canned() -> dict[str, Any]:
    """Results as `python -m bench` writes them: saturated (3 repetitions), paced (a sweep)."""
    paced_cases = {}
    for rate, t, h in ((500.0, 90.0, 30.0), (2000.0, 40.0, 20.0), (8000.0, 25.0, 10.0)):
        paced_cases[paced_case(5000, rate)] = {
            "runs": {
                "tlstrace": [_run(0, t, rate, offered_rate=rate)],
                "haproxy": [_run(0, h, rate, offered_rate=rate)],
            }
        }
    data: dict[str, Any] = {
        "meta": {"tree": "abc1234", "args": {"paced_conns": 5000}},
        "regimes": {
            "saturated": {
                "regime": "saturated",
                "cases": {
                    "50 x 4": {
                        "runs": {
                            # HAProxy drifts between repetitions; the pairs do not
                            "tlstrace": [_run(0, 12.0), _run(1, 24.0), _run(2, 15.0)],
                            "haproxy": [_run(0, 6.0), _run(1, 12.0), _run(2, 5.0)],
                        }
                    }
                },
                "errors": {"tlstrace": [], "haproxy": []},
            },
            "paced": {
                "regime": "paced",
                "headline": paced_case(5000, 2000.0),
                "cases": paced_cases,
                "errors": {},
            },
        },
    }
    for name, regime in data["regimes"].items():
        summarize(REGIMES[name], regime)
    return data


def _args() -> argparse.Namespace:
    return argparse.Namespace(repeat=3, memory_repeat=1, duration=6.0, warmup=1.0)


def test_ratio_is_the_median_of_the_pairs_by_repetition() -> None:
    s = canned()["regimes"]["saturated"]["cases"]["50 x 4"]["summary"]
    assert s["tlstrace"]["vs_haproxy_pairs"] == [2.0, 2.0, 3.0]
    assert s["tlstrace"]["vs_haproxy"] == 2.0
    assert s["tlstrace"]["cpu_us_per_msg"] == 15.0  # the median of the runs
    assert s["tlstrace"]["range"] == [12.0, 24.0]
    assert "vs_haproxy" not in s["haproxy"]


def test_every_table_line_names_its_regime(capsys: pytest.CaptureFixture[str]) -> None:
    data = canned()
    for name, regime in data["regimes"].items():
        report.table(REGIMES[name], _args(), regime)
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith(("saturated ", "paced "))]
    assert len(rows) == 2 + 3 * 2
    sat = next(r for r in rows if r.startswith("saturated") and "tlstrace" in r)
    assert "2.00x (2.00-3.00)" in sat
    assert any("5,000 conns @ 2,000/s" in r and "2.00x" in r for r in rows)


def test_verdicts_use_issue_10_targets(capsys: pytest.CaptureFixture[str]) -> None:
    report.verdicts(canned()["regimes"], True)
    out = capsys.readouterr().out
    assert (
        "saturated 50 x 4, CPU per message, tlstrace vs HAProxy: 2.00x (target <= 2x): met" in out
    )
    # paced: the headline rate only
    assert "@ 2,000/s" in out and "@ 500/s" not in out


def test_plot_from_a_results_file(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "bench-x.json"
    results.write_text(json.dumps(canned()))
    png = tmp_path / "plot.png"
    assert plot.main([str(results), "-o", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")


def test_plot_points_are_medians_by_target_and_rate() -> None:
    pts = plot.points([canned(), canned()])
    assert [p[:2] for p in pts["tlstrace"]] == [(500.0, 90.0), (2000.0, 40.0), (8000.0, 25.0)]
    assert [p[:2] for p in pts["haproxy"]] == [(500.0, 30.0), (2000.0, 20.0), (8000.0, 10.0)]


def test_plot_without_paced_results() -> None:
    with pytest.raises(plot.PlotError):
        plot.draw([{"regimes": {}}], Path("unused.png"))


def test_generator_processes_merge() -> None:
    def gen(lat: list[float], cpu: float | None) -> dict[str, Any]:
        return {
            "window_s": 2.0,
            "relay_cpu_s": cpu,
            "loadgen_cpu_s": 0.5,
            "round_trips": len(lat),
            "sent_in_window": len(lat),
            "errors": 0,
            "conns": 25,
            "latency_hist": histogram(lat),
            "latency_ms": {},
        }

    merged = merge([gen([0.001] * 99, 1.0), gen([0.010], None)])
    assert merged["round_trips"] == 100 and merged["conns"] == 50
    assert merged["relay_cpu_s"] == 1.0  # the first process samples the relay
    assert merged["loadgen_cpu_s"] == 1.0
    assert merged["rate"] == 50.0
    p = merged["latency_ms"]
    assert 1.0 <= p["p50"] <= 1.03 and 10.0 <= p["max"] <= 10.3
    assert "latency_hist" not in merged


def test_histogram_percentiles_within_two_percent() -> None:
    lat = [i / 10000 for i in range(1, 1001)]  # 0.1 ms .. 100 ms
    p = hist_percentiles(histogram(lat))
    assert p["p50"] is not None and 50.0 <= p["p50"] <= 51.5
    assert hist_percentiles({}) == {"p50": None, "p99": None, "p99.9": None, "max": None}


def test_paced_windows_become_one_case_per_rate() -> None:
    job = Job("paced", "paced", 5000, rates=(500.0, 2000.0))
    raw = {"errors": 0, "windows": [{"offered_rate": 500.0}, {"offered_rate": 2000.0}]}
    cases = split_windows(job, raw)
    assert [c for c, _ in cases] == ["5,000 conns @ 500/s", "5,000 conns @ 2,000/s"]
    assert cases[1][1]["offered_rate"] == 2000.0 and "windows" not in cases[1][1]


def test_tcp_sink_counts_hep_packets_across_reads() -> None:
    def packet(n: int) -> bytes:
        return b"HEP3" + (6 + n).to_bytes(2, "big") + b"x" * n

    stream = packet(10) + packet(300) + packet(0) + packet(1000)
    c = StreamCounter()
    assert sum(c.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) == 4
    assert c.packets == 4 and not c.broken
    c.feed(b"GET / HTTP/1.1\r\n")
    assert c.broken and c.packets == 4


def test_paced_generator_processes_merge_rate_by_rate() -> None:
    def gen(cpu: float | None) -> dict[str, Any]:
        window = {
            "offered_rate": 1000.0,
            "window_s": 2.0,
            "relay_cpu_s": cpu,
            "loadgen_cpu_s": 0.25,
            "round_trips": 2000,
            "sent_in_window": 2000,
            "latency_hist": histogram([0.002] * 2000),
            "latency_ms": {},
        }
        return {"conns": 2500, "sent": 3000, "unanswered": 0, "errors": 0, "windows": [window]}

    merged = merge([gen(0.4), gen(None)])
    assert merged["conns"] == 5000 and merged["sent"] == 6000
    (w,) = merged["windows"]
    assert w["round_trips"] == 4000 and w["rate"] == 2000.0 and w["relay_cpu_s"] == 0.4
    job = Job("paced", "paced", 5000, generators=2, rates=(2000.0,))
    ((case, one),) = split_windows(job, merged)
    assert case == "5,000 conns @ 2,000/s" and one["offered_rate"] == 2000.0


def test_regimes_chosen_and_the_former_scenario_names() -> None:
    from bench.run import build_parser, chosen_regimes
    from bench.targets import DEFAULT_REGIMES

    def chosen(*argv: str) -> list[str]:
        return chosen_regimes(build_parser().parse_args(list(argv)))

    assert chosen() == list(DEFAULT_REGIMES)
    assert "pinned" not in chosen()
    assert chosen("--scenario", "persistent", "--regime", "paced") == ["paced", "pinned"]
    assert (
        REGIMES["sparse"]
        .describe({"sparse": [400, 600, 1000]})
        .startswith("400, 600 and 1,000 TLS connections")
    )
    assert "? TLS connections" in REGIMES["saturated"].describe({})


def test_a_paced_rate_that_loses_connections_voids_only_itself_and_above() -> None:
    from bench.procs import ProcessError
    from bench.run import _check_errors

    raw = {
        "errors": 3,
        "windows": [
            {"offered_rate": 666.667 * 3, "errors": 0},
            {"offered_rate": 8000.0, "errors": 3},
        ],
    }
    _check_errors("paced", raw, 2000.0)  # the headline rate lost nothing
    job = Job("paced", "paced", 5000, rates=(2000.0, 8000.0))
    assert [c for c, _ in split_windows(job, raw)] == ["5,000 conns @ 2,000/s"]
    with pytest.raises(ProcessError):
        _check_errors("paced", raw, 8000.0)


def test_the_wss_line_is_paired_with_tlstrace_tls_not_haproxy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data: dict[str, Any] = {
        "regime": "saturated",
        "cases": {
            "50 x 4": {
                "runs": {
                    "tlstrace": [_run(0, 6.0), _run(1, 8.0)],
                    "tlstrace-wss": [_run(0, 15.0), _run(1, 24.0)],
                    "haproxy": [_run(0, 3.0), _run(1, 2.0)],
                }
            }
        },
        "errors": {},
    }
    summarize(REGIMES["saturated"], data)
    s = data["cases"]["50 x 4"]["summary"]
    wss = s["tlstrace-wss"]
    assert wss["baseline"] == "tlstrace"
    assert wss["vs_tlstrace_pairs"] == [2.5, 3.0] and wss["vs_tlstrace"] == 2.75
    assert "vs_haproxy" not in wss  # HAProxy relays no WSS: no ratio to it
    assert s["tlstrace"]["vs_haproxy_pairs"] == [2.0, 4.0] and "baseline" not in s["tlstrace"]
    report.table(REGIMES["saturated"], _args(), data)
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("saturated") and "-wss" in ln)
    assert "x" not in row.split("tlstrace-wss", 1)[1]  # no ratio in the 'vs haproxy' column
    assert "tlstrace-wss (50 x 4) has no HAProxy counterpart" in out
    assert "vs the tlstrace line, paired by repetition: 2.75x (2.50-3.00)" in out
    report.verdicts({"saturated": data}, True)
    assert "wss" not in capsys.readouterr().out  # issue 10's targets are for TLS


def test_wss_variant_runs_a_wss_listener_in_the_saturated_regime(tmp_path: Path) -> None:
    from bench.loadgen import parse_target
    from bench.targets import VARIANTS, Pki, selected, tlstrace_config

    (wss,) = [v for v in VARIANTS if v.listener == "wss"]
    assert wss in selected(VARIANTS, "saturated", True)
    assert wss not in selected(VARIANTS, "tracing", True)
    cfg = tmp_path / "relay.toml"
    pki = Pki(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "h.pem")
    tlstrace_config(
        cfg,
        port=5999,
        backend_port=5060,
        pki=pki,
        state_dir=tmp_path,
        processes=1,
        max_conns=100,
        listener=wss.listener,
    )
    assert 'listen = "wss:127.0.0.1:5999"' in cfg.read_text()
    assert parse_target("wss:127.0.0.1:5999") == ("wss", "127.0.0.1", 5999)


def test_ws_client_frames_are_what_wsproto_reads() -> None:
    from wsproto.frame_protocol import FrameProtocol, Opcode

    from bench.loadgen import invite
    from bench.ws_client import WsClient

    ws = WsClient()
    msgs = [invite(1, 100), invite(2, 600), invite(3, 70000)]  # 7-bit, 16-bit, 64-bit lengths
    wire = b"".join(ws.text(m) for m in msgs) + ws.close()
    assert ws.text(msgs[1]) is ws.text(msgs[1])  # built once
    server = FrameProtocol(client=False, extensions=[])
    got: list[tuple[Opcode, bytes]] = []  # whole messages (wsproto hands out parts)
    part = b""
    for i in range(0, len(wire), 1000):
        server.receive_bytes(wire[i : i + 1000])
        for f in server.received_frames():
            if f.opcode is Opcode.CLOSE:
                assert f.payload[0] == 1000  # wsproto gives (code, reason)
                data = b""
            else:
                data = f.payload.encode() if isinstance(f.payload, str) else bytes(f.payload)
            part += data
            if f.frame_finished and f.message_finished:
                got.append((f.opcode, part))
                part = b""
    assert [op for op, _ in got] == [Opcode.TEXT] * 3 + [Opcode.CLOSE]
    assert [p for _, p in got[:3]] == msgs  # masked, then unmasked


def test_ws_client_reads_server_frames_across_reads() -> None:
    from wsproto.frame_protocol import FrameProtocol

    from bench.ws_client import FrameReader, WsError

    server = FrameProtocol(client=False, extensions=[])  # a server's frames: unmasked
    ok = "SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    big = "SIP/2.0 200 OK\r\n" + "X: y\r\n" * 40 + "\r\n"  # a 16-bit length
    wire = server.send_data(ok) + server.ping(b"hi") + server.send_data(big)
    reader = FrameReader()
    texts: list[bytes] = []
    pings: list[bytes] = []
    for i in range(0, len(wire), 3):
        t, p = reader.feed(wire[i : i + 3])
        texts += t
        pings += p
    assert texts == [ok.encode(), big.encode()] and pings == [b"hi"] and reader.buf == b""
    with pytest.raises(WsError, match="masked"):
        FrameReader().feed(FrameProtocol(client=True, extensions=[]).send_data("x"))
    with pytest.raises(WsError, match="closed by the server: 1009"):
        FrameReader().feed(bytes([0x88, 2]) + (1009).to_bytes(2, "big"))


def test_ws_upgrade_answer_must_select_sip() -> None:
    from bench.ws_client import WsError, upgrade_request, upgrade_response

    req = upgrade_request("127.0.0.1:5999")
    assert b"Sec-WebSocket-Protocol: sip\r\n" in req and req.endswith(b"\r\n\r\n")
    ok = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
    )
    assert upgrade_response(ok[:20]) == 0
    assert upgrade_response(ok + b"\x81\x00") == len(ok)
    with pytest.raises(WsError, match="not sip"):
        upgrade_response(ok.replace(b"Sec-WebSocket-Protocol: sip\r\n", b""))
    with pytest.raises(WsError, match="refused"):
        upgrade_response(b"HTTP/1.1 400 Bad Request\r\n\r\n")
