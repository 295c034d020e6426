"""The benchmark's printed tables and target verdicts."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

#: issue 2's targets, as ratios to HAProxy (memory: an absolute bound)
CPU_PER_MSG_MAX_RATIO = 2.0
CPU_PER_HANDSHAKE_MAX_RATIO = 1.3
KIB_PER_IDLE_CONN_MAX = 40.0


def _f(v: float | None, digits: int = 1, thousands: bool = False) -> str:
    if v is None:
        return "-"
    if thousands:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _ratio(v: float | None, base: float | None) -> str:
    if v is None or not base:
        return "-"
    return f"{v / base:.2f}x"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.rjust(w) if i else h.ljust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def header(meta: dict[str, Any]) -> None:
    print(f"tlstrace benchmark (tlstrace {meta['tlstrace']}, tree {meta.get('tree') or '?'})")
    print(
        f"  {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}; "
        f"Python {meta['python']}, uvloop {meta['uvloop']}, {meta['openssl']}"
    )
    print(f"  baseline: {meta['haproxy'] or 'HAProxy not run (not installed, or --no-haproxy)'}")
    print(
        "  load generator + SIP responder pinned to core 0; the relay alone on core 1;"
        " relay CPU = utime+stime over the window / operations"
    )
    print(f"  load average at start: {' '.join(meta['loadavg'])}")


def brief(scenario: str, r: dict[str, Any]) -> str:
    if scenario == "memory":
        return (
            f"{r['held']} held, RSS {sum(r['rss_before_kib']) / 1024:.1f} -> "
            f"{sum(r['rss_after_kib']) / 1024:.1f} MiB, "
            f"{_f(r['kib_per_conn'], 1)} KiB/conn"
        )
    lat = r["latency_ms"]
    if scenario == "persistent":
        cpu = f", {_f(r['cpu_us_per_msg'])} us/msg" if r.get("cpu_us_per_msg") else ""
    else:
        cpu = (
            f", {_f(r['cpu_us_per_handshake'], 0)} us/handshake"
            if r.get("cpu_us_per_handshake")
            else ""
        )
    other = f", other load {_f(r.get('other_pct'), 0)}%" if r.get("other_pct") else ""
    return (
        f"{r['rate']:,.0f}/s, p50 {_f(lat['p50'], 2)} ms{cpu}{other}, errors {r.get('errors', 0)}"
    )


def table(
    scenario: str,
    args: argparse.Namespace,
    summary: dict[str, dict[str, Any]],
    errors: dict[str, list[str]],
) -> None:
    reps = f"median of {args.repeat}" if args.repeat > 1 else "1 run"
    hap = summary.get("haproxy", {})
    print()
    if scenario == "persistent":
        print(
            f"== persistent: {args.conns} TLS connections x {args.inflight} in flight, "
            f"{args.size}-byte INVITE -> 200 OK; {args.duration:g} s window after "
            f"{args.warmup:g} s warm-up; {reps} =="
        )
        print(
            "   direct = plain TCP straight to the responder (no TLS, no relay);"
            " a round trip = 2 relayed messages"
        )
        headers = [
            "target",
            "round trips/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "CPU us/msg",
            "(min-max)",
            "CPU us/rt",
            "relay core",
            "vs haproxy",
            "other load",
        ]
        base = hap.get("cpu_us_per_msg")
        rows = []
        for name, s in summary.items():
            if not s.get("runs"):
                rows.append([name, "error", *["-"] * (len(headers) - 2)])
                continue
            rows.append(
                [
                    name,
                    _f(s["rate"], thousands=True),
                    _f(s["p50"], 2),
                    _f(s["p99"], 2),
                    _f(s["p99.9"], 2),
                    _f(s.get("cpu_us_per_msg")),
                    _range(s, 1),
                    _f(s.get("cpu_us_per_round_trip")),
                    _pct(s.get("relay_core_pct")),
                    _ratio(s.get("cpu_us_per_msg"), base)
                    if name != "haproxy" and s.get("cpu_us_per_msg")
                    else "-",
                    _pct(s.get("other_pct")),
                ]
            )
        _print_table(headers, rows)
    elif scenario == "handshake":
        print(
            f"== new connections: {args.workers} workers, each TLS 1.3 handshake (ECDSA P-256)"
            f" + one OPTIONS + close_notify/close; {args.duration:g} s window after "
            f"{args.warmup:g} s warm-up; {reps} =="
        )
        print(
            "   direct = plain TCP connect + OPTIONS + close to the responder (no TLS);"
            " latency = connect to 200 OK"
        )
        headers = [
            "target",
            "handshakes/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "CPU us/handshake",
            "(min-max)",
            "relay core",
            "vs haproxy",
            "other load",
        ]
        base = hap.get("cpu_us_per_handshake")
        rows = []
        for name, s in summary.items():
            if not s.get("runs"):
                rows.append([name, "error", *["-"] * (len(headers) - 2)])
                continue
            rows.append(
                [
                    name,
                    _f(s["rate"], thousands=True),
                    _f(s["p50"], 2),
                    _f(s["p99"], 2),
                    _f(s["p99.9"], 2),
                    _f(s.get("cpu_us_per_handshake"), 0),
                    _range(s, 0),
                    _pct(s.get("relay_core_pct")),
                    _ratio(s.get("cpu_us_per_handshake"), base)
                    if name != "haproxy" and s.get("cpu_us_per_handshake")
                    else "-",
                    _pct(s.get("other_pct")),
                ]
            )
        _print_table(headers, rows)
    else:
        print(
            f"== memory: {args.idle:,} idle TLS connections (handshake done, then held); {reps} =="
        )
        print(
            "   relays run as 2 processes sharing the port with SO_REUSEPORT (tlstrace"
            " reuse_port = true; HAProxy's default on Linux), RSS summed:"
        )
        print(
            "   20,000 fds per process, 2 per relayed connection. direct = the responder's"
            " own RSS for plain TCP connections."
        )
        headers = [
            "target",
            "held",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/conn",
            "vs haproxy",
            "fds per process",
        ]
        base = hap.get("kib_per_conn")
        rows = []
        for name, s in summary.items():
            if not s.get("runs"):
                rows.append([name, "error", *["-"] * (len(headers) - 2)])
                continue
            rows.append(
                [
                    name,
                    _f(s["held"], thousands=True),
                    _f(s["rss_before_kib"] / 1024),
                    _f(s["rss_after_kib"] / 1024),
                    _f(s["kib_per_conn"]),
                    _ratio(s["kib_per_conn"], base) if name not in ("haproxy", "direct") else "-",
                    "/".join(str(x) for x in s["fds"]),
                ]
            )
        _print_table(headers, rows)
    others = [s["other_pct"] for s in summary.values() if s.get("other_pct") is not None]
    if others and max(others) > 20:
        print(
            f"   note: other processes on this machine used up to {max(others):.0f}% of a core"
            " (median per target, 'other load') during these runs; contention inflates CPU"
            " per operation"
        )
    for name, errs in errors.items():
        for e in errs[:2]:
            print(f"   ! {name}: {e.splitlines()[0] if e else e}")


def _range(s: dict[str, Any], digits: int) -> str:
    r = s.get("cpu_range")
    if not r or s.get("runs", 0) < 2:
        return "-"
    return f"{r[0]:.{digits}f}-{r[1]:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


def sink(counts: dict[str, Any]) -> None:
    print(f"\nHEP sink (UDP): {counts}")


def verdicts(scenarios: dict[str, Any], have_haproxy: bool) -> None:
    print("\n== targets (issue 2), tracing off ==")

    def get(scn: str, name: str, key: str) -> float | None:
        s = scenarios.get(scn, {}).get("summary", {}).get(name, {})
        v = s.get(key)
        return float(v) if v is not None else None

    def line(label: str, value: float | None, limit: float, unit: str, pairs: str = "") -> None:
        if value is None:
            print(f"  {label}: not measured")
            return
        ok = "met" if value <= limit else "MISSED"
        print(f"  {label}: {value:.2f}{unit} (target <= {limit:g}{unit}): {ok}{pairs}")

    def paired(scn: str) -> list[float]:
        """tlstrace/HAProxy ratio of each repetition: their runs are next to each other in
        time, so the machine's slow drifts (seen here: the same target 30% faster in one
        repetition than in the next) cancel out within a pair."""
        t = scenarios.get(scn, {}).get("summary", {}).get("tlstrace", {}).get("cpu_by_rep", {})
        h = scenarios.get(scn, {}).get("summary", {}).get("haproxy", {}).get("cpu_by_rep", {})
        return [t[k] / h[k] for k in sorted(t) if t.get(k) and h.get(k)]

    def ratio_line(label: str, scn: str, key: str, limit: float) -> None:
        t, h = get(scn, "tlstrace", key), get(scn, "haproxy", key)
        pairs = paired(scn)
        if len(pairs) < 2:
            line(label, t / h if t and h else None, limit, "x")
            return
        extra = (
            f"; median of the {len(pairs)} paired runs ("
            + " ".join(f"{r:.2f}x" for r in pairs)
            + ")"
            + (f"; ratio of the medians {t / h:.2f}x" if t and h else "")
        )
        line(label, statistics.median(pairs), limit, "x", extra)

    if "persistent" in scenarios:
        ratio_line(
            "CPU per relayed message vs HAProxy",
            "persistent",
            "cpu_us_per_msg",
            CPU_PER_MSG_MAX_RATIO,
        )
    if "handshake" in scenarios:
        ratio_line(
            "CPU per new TLS connection vs HAProxy",
            "handshake",
            "cpu_us_per_handshake",
            CPU_PER_HANDSHAKE_MAX_RATIO,
        )
    if "memory" in scenarios:
        line(
            "memory per idle TLS connection",
            get("memory", "tlstrace", "kib_per_conn"),
            KIB_PER_IDLE_CONN_MAX,
            " KiB",
        )
    if not have_haproxy:
        print("  (HAProxy not run: the ratio targets cannot be checked)")
