"""The benchmark's printed tables and target verdicts.

Every table line names its regime, its case (the load's shape) and its target, and gives the
target's cost beside HAProxy's from the same run: 'vs haproxy' is the median, over the
repetitions, of (this run / the HAProxy run of the same repetition), the two measured next to
each other in time so that the machine's slow drifts cancel out within a pair.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.targets import Regime

#: issue 10's targets, as ratios to HAProxy in the same run (memory: an absolute bound)
CPU_PER_MSG_MAX_RATIO = 2.0
CPU_PER_HANDSHAKE_MAX_RATIO = 1.3
TRACING_MAX_RATIO = 3.0
KIB_PER_IDLE_CONN_MAX = 20.0
#: a relay whose CPU time over the window is this share of one core or more is the bottleneck
SATURATED_PCT = 90.0


def _f(v: float | None, digits: int = 1, thousands: bool = False) -> str:
    if v is None:
        return "-"
    if thousands:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    left = 3  # regime, case, target

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(fmt(headers))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def header(meta: dict[str, Any]) -> None:
    print(f"tlstrace benchmark (tlstrace {meta['tlstrace']}, tree {meta.get('tree') or '?'})")
    print(
        f"  {meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}; "
        f"Python {meta['python']}, uvloop {meta['uvloop']}, {meta['openssl']}"
    )
    print(f"  baseline: {meta['haproxy'] or 'HAProxy not run (not installed, or --no-haproxy)'}")
    print(
        "  relay CPU = utime+stime of the relay's processes over the window / operations;"
        " 'vs haproxy' = median of the per-repetition ratios to HAProxy in the same run"
    )
    print(f"  load average at start: {' '.join(meta['loadavg'])}")


def brief(mode: str, r: dict[str, Any]) -> str:
    if mode == "memory":
        return (
            f"{r['held']} held, RSS {sum(r['rss_before_kib']) / 1024:.1f} -> "
            f"{sum(r['rss_after_kib']) / 1024:.1f} MiB, "
            f"{_f(r['kib_per_conn'], 1)} KiB/conn"
        )
    lat = r["latency_ms"]
    if mode == "handshake":
        cpu = (
            f", {_f(r['cpu_us_per_handshake'], 0)} us/handshake"
            if r.get("cpu_us_per_handshake")
            else ""
        )
    else:
        cpu = f", {_f(r['cpu_us_per_msg'])} us/msg" if r.get("cpu_us_per_msg") else ""
    relay = f", relay {_f(r.get('relay_core_pct'), 0)}%" if r.get("relay_core_pct") else ""
    other = f", other load {_f(r.get('other_pct'), 0)}%" if r.get("other_pct") else ""
    gen = (
        f", {r.get('engine', 'python')} generator {_f(r['loadgen_us_per_round_trip'])} us/rt"
        if r.get("loadgen_us_per_round_trip")
        else ""
    )
    side = (
        f", responder+sinks {_f(r['side_us_per_round_trip'])} us/rt"
        if r.get("side_us_per_round_trip")
        else ""
    )
    return (
        f"{r['rate']:,.0f}/s, p50 {_f(lat['p50'], 2)} ms{cpu}{relay}{gen}{side}{other},"
        f" errors {r.get('errors', 0)}"
    )


def _vs(s: dict[str, Any]) -> str:
    v = s.get("vs_haproxy")
    if v is None:
        return "-"
    pairs = s.get("vs_haproxy_pairs") or []
    if len(pairs) < 2:
        return f"{v:.2f}x"
    return f"{v:.2f}x ({min(pairs):.2f}-{max(pairs):.2f})"


def _range(s: dict[str, Any], digits: int) -> str:
    r = s.get("range")
    if not r or s.get("runs", 0) < 2:
        return "-"
    return f"{r[0]:.{digits}f}-{r[1]:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


_ENGINE_NAMES = {
    "c": "C (OpenSSL + epoll, batched sends)",
    "c-each": "C (OpenSSL + epoll, one send per request)",
    "python": "Python",
}


def engines_text(engines: dict[str, str]) -> str:
    """Which load generator engine ran the regime's lines: one name when all used the same,
    else the most common one and the exceptions (e.g. the WSS line on the Python engine)."""
    if not engines:
        return ""
    names = list(engines.values())
    main = max(sorted(set(names)), key=names.count)
    others = [f"{t}: {_ENGINE_NAMES.get(e, e)}" for t, e in engines.items() if e != main]
    return _ENGINE_NAMES.get(main, main) + (f" ({', '.join(others)})" if others else "")


def regime_title(
    regime: Regime, args: argparse.Namespace, data: dict[str, Any] | None = None
) -> str:
    reps = args.memory_repeat if regime.load == "memory" else args.repeat
    runs = f"median of {reps}" if reps > 1 else "1 run"
    if regime.load == "memory":
        return f"== {regime.name}: {regime.describe(vars(args))}; {runs} =="
    engines = engines_text((data or {}).get("engines") or {})
    gen = f"; load generator: {engines}" if engines else ""
    return (
        f"== {regime.name}: {regime.describe(vars(args))}; {args.duration:g} s window after "
        f"{args.warmup:g} s warm-up; {runs}{gen} =="
    )


def table(regime: Regime, args: argparse.Namespace, data: dict[str, Any]) -> None:
    print()
    print(regime_title(regime, args, data))
    if regime.load == "memory":
        print(
            "   relays run as 2 processes sharing the port with SO_REUSEPORT (tlstrace"
            " reuse_port = true; HAProxy's default on Linux), RSS summed; KiB/conn ="
            " (RSS after - RSS before) / connections still open once RSS settled;"
            " direct = the responder's own RSS for plain TCP connections"
        )
        headers = [
            "regime",
            "case",
            "target",
            "held",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/conn",
            "(min-max)",
            "vs haproxy",
            "fds per process",
        ]
    else:
        unit = "handshake" if regime.load == "handshake" else "msg"
        rate = "handshakes/s" if regime.load == "handshake" else "round trips/s"
        if regime.load == "paced":
            print(
                "   open loop: requests leave on schedule whether answered or not; latency from"
                " the scheduled send; round trips/s = answers in the window"
            )
        elif regime.load == "closed":
            print("   closed loop: each answer sends the next request; a round trip = 2 messages")
        print(
            "   relay core = the relay's CPU time / window (100% = one core busy);"
            " other load = CPU used by processes not ours"
            + (
                " (generator + responder on core 0, relay on core 1)"
                if regime.pinned
                else " (nothing pinned)"
            )
        )
        headers = [
            "regime",
            "case",
            "target",
            rate,
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            f"CPU us/{unit}",
            "(min-max)",
            "relay core",
            "vs haproxy",
            "other load",
        ]
    rows = []
    for case, c in data["cases"].items():
        for name, s in c["summary"].items():
            if not s.get("runs"):
                rows.append([regime.name, case, name, "error", *["-"] * (len(headers) - 4)])
                continue
            if regime.load == "memory":
                rows.append(
                    [
                        regime.name,
                        case,
                        name,
                        _f(s["held"], thousands=True),
                        _f(s["rss_before_kib"] / 1024),
                        _f(s["rss_after_kib"] / 1024),
                        _f(s["kib_per_conn"]),
                        _range(s, 1),
                        _vs(s) if name != "direct" else "-",
                        "/".join(str(x) for x in s["fds"]),
                    ]
                )
                continue
            key = "cpu_us_per_handshake" if regime.load == "handshake" else "cpu_us_per_msg"
            digits = 0 if regime.load == "handshake" else 1
            rows.append(
                [
                    regime.name,
                    case,
                    name,
                    _f(s["rate"], thousands=True),
                    _f(s["p50"], 2),
                    _f(s["p99"], 2),
                    _f(s["p99.9"], 2),
                    _f(s.get(key), digits),
                    _range(s, digits),
                    _pct(s.get("relay_core_pct")),
                    _vs(s),
                    _pct(s.get("other_pct")),
                ]
            )
    if rows:
        _print_table(headers, rows)
    others = [
        s["other_pct"]
        for c in data["cases"].values()
        for s in c["summary"].values()
        if s.get("other_pct") is not None
    ]
    if others and max(others) > 20:
        print(
            f"   note: other processes on this machine used up to {max(others):.0f}% of a core"
            " (median per line, 'other load') during these runs: contended figures"
        )
    if regime.name in ("saturated", "tracing"):
        below = [
            f"{name} {s['relay_core_pct']:.0f}%"
            for c in data["cases"].values()
            for name, s in c["summary"].items()
            if s.get("relay_core_pct") is not None and s["relay_core_pct"] < SATURATED_PCT
        ]
        if below:
            print(
                f"   note: not saturated (relay core below {SATURATED_PCT:.0f}%): "
                + ", ".join(below)
                + "; the relay was not the bottleneck: other load on the machine, or the"
                " load generators and the responder sharing its 2 cores, set the rate"
            )
    for case, c in data["cases"].items():
        for name, s in c["summary"].items():
            base = s.get("baseline")
            if not base or not s.get("runs"):
                continue
            v = s.get(f"vs_{base}")
            pairs = s.get(f"vs_{base}_pairs") or []
            spread = f" ({min(pairs):.2f}-{max(pairs):.2f})" if len(pairs) > 1 else ""
            ratio = f"{v:.2f}x{spread}" if v is not None else "not measured"
            print(
                f"   note: {name} ({case}) has no HAProxy counterpart: HAProxy cannot relay this"
                f" load to a SIP server, so no 'vs haproxy'; its CPU figure vs the {base}"
                f" line, paired by repetition: {ratio}"
            )
    for transport, counts in data.get("hep_sinks", {}).items():
        print(f"   HEP sink ({transport.upper()}): {counts}")
    for name, errs in data.get("errors", {}).items():
        for e in errs[:2]:
            print(f"   ! {name}: {e.splitlines()[0] if e else e}")


def verdicts(regimes: dict[str, Any], have_haproxy: bool) -> None:
    print("\n== targets (issue 10): ratios to HAProxy in the same run ==")

    def line(label: str, s: dict[str, Any] | None, key: str, limit: float, unit: str) -> None:
        if not s or s.get(key) is None:
            print(f"  {label}: not measured")
            return
        value = float(s[key])
        ok = "met" if value <= limit else "MISSED"
        pairs = s.get("vs_haproxy_pairs") or []
        extra = (
            f"; paired runs {' '.join(f'{p:.2f}x' for p in pairs)}"
            if key == "vs_haproxy" and len(pairs) > 1
            else ""
        )
        print(f"  {label}: {value:.2f}{unit} (target <= {limit:g}{unit}): {ok}{extra}")

    def each(regime: str, variant: str, label: str, key: str, limit: float, unit: str) -> None:
        data = regimes.get(regime)
        if data is None:
            return
        for case, c in data["cases"].items():
            if regime == "paced" and case != data.get("headline"):
                continue
            line(f"{regime} {case}, {label}", c["summary"].get(variant), key, limit, unit)

    per_msg = "CPU per message, tlstrace vs HAProxy"
    each("saturated", "tlstrace", per_msg, "vs_haproxy", CPU_PER_MSG_MAX_RATIO, "x")
    each("sparse", "tlstrace", per_msg, "vs_haproxy", CPU_PER_MSG_MAX_RATIO, "x")
    each("paced", "tlstrace", per_msg, "vs_haproxy", CPU_PER_MSG_MAX_RATIO, "x")
    each(
        "handshake",
        "tlstrace",
        "CPU per new connection vs HAProxy",
        "vs_haproxy",
        CPU_PER_HANDSHAKE_MAX_RATIO,
        "x",
    )
    for variant, label in (("tlstrace+trace", "UDP"), ("tlstrace+trace-tcp", "TCP")):
        each(
            "tracing",
            variant,
            f"tracing to a {label} collector, CPU per message vs HAProxy",
            "vs_haproxy",
            TRACING_MAX_RATIO,
            "x",
        )
    each(
        "memory",
        "tlstrace",
        "memory per idle TLS connection",
        "kib_per_conn",
        KIB_PER_IDLE_CONN_MAX,
        " KiB",
    )
    if not have_haproxy:
        print("  (HAProxy not run: the ratio targets cannot be checked)")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.report RESULTS.json`: print a results file's tables again."""
    import json
    import sys
    from pathlib import Path

    from bench.targets import REGIMES

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("results", type=Path, help="a bench/results/bench-*.json file")
    a = p.parse_args(argv)
    try:
        results = json.loads(a.results.read_text())
    except (OSError, ValueError) as e:
        print(f"bench.report: {e}", file=sys.stderr)
        return 2
    meta = results.get("meta", {})
    args = argparse.Namespace(**meta.get("args", {}))
    header(meta)
    for name, data in results.get("regimes", {}).items():
        if name in REGIMES:
            table(REGIMES[name], args, data)
    verdicts(results.get("regimes", {}), bool(meta.get("haproxy")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
