"""Plot a run's metrics.jsonl: reward, response length, staleness and timings in one PNG.

    python tools/plot_run.py outputs/embedded_cpu/metrics.jsonl -o run.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on a login node without a display
import matplotlib.pyplot as plt  # noqa: E402

PANELS = {
    "reward": ["rollout/reward_mean", "eval/reward_mean"],
    "response length (tokens)": ["rollout/response_len_mean"],
    "staleness (versions)": ["rollout/staleness_mean", "rollout/staleness_max"],
    "time per step (s)": ["perf/step_time_s", "perf/rollout_time_s", "perf/train_time_s", "perf/update_weights_time_s"],
}


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"plot_run: {path}:{number}: not JSON ({e.msg})") from None
            if len(rows) > 1 and rows[-1].get("step", 0) < rows[-2].get("step", 0):
                print(f"plot_run: warning: {path}:{number}: step {rows[-1]['step']} follows step {rows[-2]['step']} "
                      f"(two runs written into one file?)", file=sys.stderr)
    return rows


def plot(rows: list[dict], output: Path, title: str) -> list[str]:
    """Draw every panel that has data; returns the metric names drawn."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    drawn = []
    for ax, (panel, keys) in zip(axes.flat, PANELS.items()):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o" if key.startswith("eval/") else None, markersize=3, label=key)
                drawn.append(key)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="metrics.jsonl written by a run")
    parser.add_argument("-o", "--output", type=Path, default=Path("run.png"))
    args = parser.parse_args(argv)
    if not args.metrics.is_file():
        raise SystemExit(f"plot_run: file not found: {args.metrics}")
    rows = read_metrics(args.metrics)
    if not rows:
        raise SystemExit(f"plot_run: {args.metrics} has no rows")
    drawn = plot(rows, args.output, str(args.metrics.parent.name or args.metrics))
    print(f"wrote {args.output} ({len(rows)} rows; {', '.join(drawn)})", file=sys.stderr)


if __name__ == "__main__":
    main()
