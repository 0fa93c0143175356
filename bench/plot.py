"""The benchmark figure: added latency, CPU per frame, memory and session rate, one panel each.

.venv/bin/python -m bench.plot bench/results/results.json docs/benchmarks.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): no display on a server


def plot(results: dict[str, Any], path: Path) -> None:
    """Write a 2 × 2 PNG of the run's figures to ``path``."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (lat, cpu), (mem, hs) = axes
    relays = {name: mode for name, mode in results["modes"].items() if mode.get("steps")}
    for name, mode in relays.items():
        steps = mode["steps"]
        xs = [s["streams"] for s in steps]
        if name != "direct":
            added = [(s["streams"], s.get("added_ms", {}).get("p99")) for s in steps]
            added = [(x, y) for x, y in added if y is not None]
            if added:
                line = lat.plot(*zip(*added, strict=True), marker="o", label=name)[0]
                bad = [(s["streams"], s["added_ms"]["p99"]) for s in steps if s["saturated"] and s.get("added_ms")]
                bad = [(x, y) for x, y in bad if y is not None]
                if bad:
                    lat.plot(*zip(*bad, strict=True), "x", color=line.get_color(), markersize=12)
            cpu.plot(xs, [s["relay_cpu_us_per_frame"] for s in steps], marker="o", label=name)
            mem.plot(xs, [s["relay_rss_mb"] for s in steps], marker="o", label=name)
        else:
            lat.plot(xs, [s["rtt_ms"]["p99"] for s in steps], "k--", marker=".", label="direct p99 RTT (absolute)")
    lat.axhline(5.0, color="red", linewidth=0.8, linestyle=":", label="5 ms (capacity limit)")
    lat.set(title="p99 added round trip over direct (× = saturated)", xlabel="concurrent streams", ylabel="ms")
    lat.set_yscale("symlog", linthresh=1.0)
    cpu.set(title="relay CPU per relayed frame", xlabel="concurrent streams", ylabel="µs")
    cpu.set_yscale("log")
    mem.set(title="relay resident memory", xlabel="concurrent streams", ylabel="MB")
    names, rates = [], []
    for name, mode in results["modes"].items():
        thr = (mode.get("handshake") or {}).get("throughput")
        if thr and thr.get("sessions_per_second") is not None:
            names.append(name)
            rates.append(thr["sessions_per_second"])
    hs.bar(names, rates, color="tab:blue")
    hs.axhline(1000, color="red", linewidth=0.8, linestyle=":", label="1,000/s target (SQLite)")
    hs.axhline(600, color="orange", linewidth=0.8, linestyle=":", label="600/s target (PostgreSQL)")
    hs.set(title="sessions opened and closed per second", ylabel="sessions/s")
    hs.tick_params(axis="x", labelrotation=30)
    for ax in (lat, cpu, mem):
        ax.set_xscale("log")
    for ax in (lat, cpu, mem, hs):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(
        f"sttgate benchmark ({results['kind']}, {m['date_utc']}): {m['nproc']} × {m['cpu_model']}, "
        f"{results['setup']['pinning']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    """``python -m bench.plot RESULTS_JSON OUT_PNG``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    plot(json.loads(args.results.read_text()), args.png)


if __name__ == "__main__":
    main()
