"""The README's two charts, drawn from one run's results (bench/results/dispatch.json and
realjob.json): jobs/s and p99 per system at each concurrency, and Redis µs per job.

`python -m bench.charts [--out docs/]` (matplotlib, from the `bench` extra)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR
from bench.stats import median as _median

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
DISPATCH_PNG = "bench-dispatch.png"
REDIS_PNG = "bench-redis.png"


def _runs(dispatch: dict[str, Any]) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """{consumers: {system: [result...]}} from dispatch.json's raw part."""
    raw = dispatch["raw"]["dispatch"]
    return {int(level): runs for level, runs in raw.items()}


def _short(name: str) -> str:
    return name.split(" (")[0]


def draw(results_dir: Path = RESULTS_DIR, out_dir: Path = DOCS_DIR) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    dispatch = json.loads((results_dir / "dispatch.json").read_text())
    machine = dispatch["machine"]
    stamp = (
        f"{machine['when_utc']} UTC, {machine['cores']} cores,"
        f" load {machine['load_average_1_5_15'][0]:.1f}"
    )
    levels = _runs(dispatch)
    written = []

    fig, axes = plt.subplots(2, len(levels), figsize=(5.5 * len(levels), 7), squeeze=False)
    for col, (level, runs) in enumerate(sorted(levels.items())):
        names = [_short(n) for n in runs]
        ok = {n: [r for r in rs if not r.get("error")] for n, rs in runs.items()}
        rate = [_median([r["jobs_per_s"] for r in rs]) for rs in ok.values()]
        tail = [_median([r["latency"].get("p99_ms", math.nan) for r in rs]) for rs in ok.values()]
        colours = ["tab:blue" if n.startswith("wgpu") else "tab:gray" for n in runs]
        for row, (values, label) in enumerate(
            ((rate, "jobs/s end to end (higher is better)"), (tail, "p99 ms at half load (lower)"))
        ):
            ax = axes[row][col]
            ax.barh(names, values, color=colours)
            ax.invert_yaxis()
            ax.set_title(f"{level} consumers: {label}", fontsize=10)
            for y, v in enumerate(values):
                if not math.isnan(v):
                    ax.text(v, y, f" {v:,.0f}" if v >= 10 else f" {v:.1f}", va="center")
            ax.margins(x=0.25)
    fig.suptitle(f"Dispatch, no-op jobs, median of alternated runs ({stamp})", fontsize=11)
    written.append(_save(fig, out_dir / DISPATCH_PNG))

    bars: list[tuple[str, float]] = []
    for level, runs in sorted(levels.items()):
        for name, rs in runs.items():
            usec = _median(
                [r.get("redis_cpu_us_per_job", math.nan) for r in rs if not r.get("error")]
            )
            bars.append((f"{_short(name)} @{level}", usec))
    real_path = results_dir / "realjob.json"
    if real_path.exists():
        raw = json.loads(real_path.read_text())["raw"]
        real = (raw.get("realjob") or raw)["runs"]  # as `python -m bench` or real_job wrote it
        for kind, rs in real.items():
            name = f"wgpu hub, {kind.split(' (')[0]} (real worker)"
            bars.append((name, _median([r["redis_cpu_us"] for r in rs])))
            if all("net_redis_cpu_us" in r for r in rs):  # without the stack's idle cost
                net = _median([r["net_redis_cpu_us"] for r in rs])
                bars.append((f"{name}, net of idle", net))
    cost_path = results_dir / "redis_cost.json"
    if cost_path.exists():  # bench.redis_cost: Redis driven directly, no hub or workers
        raw = json.loads(cost_path.read_text())["raw"]
        systems = (raw.get("redis_cost") or raw).get("systems", {})
        for name, samples in systems.items():
            bars.append((f"{_short(name)}, Redis alone", _median(samples["cpu_us_per_job"])))
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(bars) + 1.5))
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    colours = ["tab:blue" if label.startswith("wgpu") else "tab:gray" for label in labels]
    ax.barh(labels, values, color=colours)
    ax.invert_yaxis()
    for y, v in enumerate(values):
        if not math.isnan(v):
            ax.text(v, y, f" {v:,.0f}", va="center")
    ax.margins(x=0.2)
    ax.set_xlabel("Redis process CPU µs per job; one Redis is shared by every hub replica")
    ax.set_title(f"Redis work per job ({stamp})", fontsize=11)
    written.append(_save(fig, out_dir / REDIS_PNG))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=DOCS_DIR)
    args = parser.parse_args()
    for path in draw(args.results, args.out):
        print(f"chart: {path}")


if __name__ == "__main__":
    main()
