"""The plot: relay CPU per message against offered load, tlstrace beside HAProxy.

    python -m bench.plot                                  # newest bench/results/bench-*.json
    python -m bench.plot RESULTS.json ... -o docs/bench-cpu-per-message.png

Reads the paced regime of `python -m bench` results (open loop, 5,000 connections, one
window per rate of the sweep: `--rates` and `--paced-rate`) and draws, for each target, the
median CPU per relayed message at each offered rate, and below it how busy the relay was (100 %
= one core: saturated). Several files are merged (medians per target and rate), so a plot can
be redrawn from committed or archived results. Needs matplotlib: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PNG = Path(__file__).resolve().parent.parent / "docs" / "bench-cpu-per-message.png"
#: drawing order and colours
STYLE = {"tlstrace": ("tab:blue", "o"), "haproxy": ("tab:orange", "s")}


class PlotError(RuntimeError):
    pass


#: a window whose median latency exceeds this had a queue building: more was offered than the
#: relay, the load generators or the responder could take
QUEUED_MS = 50.0


def points(
    results: Sequence[dict[str, Any]],
) -> dict[str, list[tuple[float, float, float, bool]]]:
    """{target: [(offered rate, CPU us per message, relay core %, queued), ...]} sorted by rate:
    the medians of every run at that rate in `results`; `queued` when the median run's p50
    latency exceeded QUEUED_MS (answers fell behind the schedule)."""
    acc: dict[str, dict[float, tuple[list[float], list[float], list[float]]]] = {}
    for res in results:
        paced = res.get("regimes", {}).get("paced")
        if not paced:
            continue
        for case in paced.get("cases", {}).values():
            for target, runs in case.get("runs", {}).items():
                for r in runs:
                    cpu, rate = r.get("cpu_us_per_msg"), r.get("offered_rate")
                    if cpu is None or rate is None:
                        continue
                    cpus, busy, p50 = acc.setdefault(target, {}).setdefault(
                        float(rate), ([], [], [])
                    )
                    cpus.append(float(cpu))
                    busy.append(float(r.get("relay_core_pct") or 0.0))
                    p50.append(float((r.get("latency_ms") or {}).get("p50") or 0.0))
    return {
        target: sorted(
            (
                rate,
                statistics.median(c),
                statistics.median(b),
                statistics.median(lat) > QUEUED_MS,
            )
            for rate, (c, b, lat) in by_rate.items()
        )
        for target, by_rate in acc.items()
    }


def _subtitle(results: Sequence[dict[str, Any]]) -> str:
    metas = [r.get("meta", {}) for r in results]
    trees = sorted({str(m.get("tree")) for m in metas if m.get("tree")})
    conns = sorted(
        {int(m["args"]["paced_conns"]) for m in metas if m.get("args", {}).get("paced_conns")}
    )
    others = [
        float(r["other_pct"])
        for res in results
        for case in res.get("regimes", {}).get("paced", {}).get("cases", {}).values()
        for runs in case.get("runs", {}).values()
        for r in runs
        if r.get("other_pct") is not None
    ]
    parts = [
        f"{'/'.join(f'{c:,}' for c in conns) or '?'} TLS connections, open loop, 600-byte INVITE"
        " -> 200 OK, nothing pinned",
        f"tree {', '.join(trees) or '?'}",
    ]
    if others and statistics.median(others) > 20:
        parts.append(f"contended: other load {statistics.median(others):.0f}% of a core")
    return "; ".join(parts)


def draw(results: Sequence[dict[str, Any]], png: Path) -> None:
    """Draw the plot of `results` (parsed bench JSON) into `png`."""
    pts = points(results)
    if not pts:
        raise PlotError("no paced regime in these results (python -m bench --regime paced)")
    try:
        importlib.import_module("matplotlib").use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install -e '.[bench]'") from None
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    names = [n for n in STYLE if n in pts] + sorted(n for n in pts if n not in STYLE)
    for name in names:
        colour, marker = STYLE.get(name, (None, "^"))
        xs = [p[0] for p in pts[name]]
        ax.plot(xs, [p[1] for p in pts[name]], marker=marker, color=colour, label=name)
        ax2.plot(xs, [p[2] for p in pts[name]], marker=marker, color=colour, label=name)
        queued = [p for p in pts[name] if p[3]]
        if queued:
            for axis, i in ((ax, 1), (ax2, 2)):
                axis.plot(
                    [p[0] for p in queued],
                    [p[i] for p in queued],
                    linestyle="none",
                    marker=marker,
                    markersize=9,
                    markerfacecolor="white",
                    color=colour,
                )
    if any(p[3] for ps in pts.values() for p in ps):
        ax.plot(
            [],
            [],
            linestyle="none",
            marker="o",
            markerfacecolor="white",
            color="grey",
            label=f"queue building (p50 > {QUEUED_MS:g} ms)",
        )
    if "tlstrace" in pts and "haproxy" in pts:
        hap = {p[0]: p[1] for p in pts["haproxy"]}
        for rate, cpu, _, _ in pts["tlstrace"]:
            if hap.get(rate):
                ax.annotate(
                    f"{cpu / hap[rate]:.1f}x",
                    (rate, cpu),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=8,
                )
    ax.set_xscale("log")
    top = max(p[1] for ps in pts.values() for p in ps)
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("relay CPU per relayed message (µs)")
    fig.suptitle("Relay CPU per message against offered load", fontsize=12)
    ax.set_title(_subtitle(results), fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax2.set_ylim(0, 110)
    ax2.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax2.set_ylabel("relay core busy (%)")
    ax2.set_xlabel("offered load (requests/s in total; each = 2 relayed messages)")
    ax2.grid(True, which="both", alpha=0.3)
    rates = sorted({p[0] for ps in pts.values() for p in ps})
    ax2.set_xticks(rates)
    ax2.set_xticklabels([f"{r:,.0f}" for r in rates])
    ax2.minorticks_off()
    ax.minorticks_off()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def newest_with_paced() -> Path | None:
    for path in sorted(RESULTS.glob("bench-*.json"), reverse=True):
        try:
            if "paced" in json.loads(path.read_text()).get("regimes", {}):
                return path
        except (OSError, ValueError):
            continue
    return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", nargs="*", type=Path, help="bench JSON files (default: newest)")
    p.add_argument(
        "-o", "--out", type=Path, default=DEFAULT_PNG, help=f"PNG (default {DEFAULT_PNG})"
    )
    args = p.parse_args(argv)
    files = list(args.results)
    if not files:
        newest = newest_with_paced()
        if newest is None:
            print(f"bench.plot: no results with the paced regime in {RESULTS}", file=sys.stderr)
            return 2
        files = [newest]
    try:
        draw([json.loads(f.read_text()) for f in files], args.out)
    except (OSError, ValueError, PlotError) as e:
        print(f"bench.plot: {e}", file=sys.stderr)
        return 2
    print(f"{args.out} (from {', '.join(str(f) for f in files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
