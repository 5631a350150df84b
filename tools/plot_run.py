"""Plot a run's metrics.jsonl (reward, response length, staleness, timings), or overlay several runs.

    python tools/plot_run.py outputs/embedded_cpu/metrics.jsonl -o run.png
    python tools/plot_run.py A/metrics.jsonl B/metrics.jsonl --labels bf16 fp8-tis -o runs.png
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
# several runs: one metric per panel, one line per run
OVERLAY = {
    "eval reward": ["eval/reward_mean"],
    "train reward": ["rollout/reward_mean"],
    "rollout/trainer log-prob mismatch (per token)": ["train/rollout_logprob_abs_diff"],
    "staleness (versions)": ["rollout/staleness_mean"],
    "step time (s)": ["perf/step_time_s"],
    "response length (tokens)": ["rollout/response_len_mean"],
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


def plot_runs(runs: dict[str, list[dict]], output: Path, title: str) -> list[str]:
    """Draw every panel that has data (one run: PANELS, several: OVERLAY); returns the lines drawn."""
    panels = PANELS if len(runs) == 1 else OVERLAY
    columns = 2 if len(panels) == 4 else 3
    fig, axes = plt.subplots(len(panels) // columns, columns, figsize=(6 * columns, 7), sharex=True)
    drawn = []
    for ax, (panel, keys) in zip(axes.flat, panels.items()):
        for run, (label, rows) in enumerate(runs.items()):
            for line, key in enumerate(keys):
                points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if points:  # a run keeps its colour in every panel
                    name, color = (key, f"C{line}") if len(runs) == 1 else (label, f"C{run}")
                    ax.plot(*zip(*points), marker="o" if key.startswith("eval/") else None, markersize=3, label=name,
                            color=color)
                    drawn.append(f"{label}: {key}")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not in these runs", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, nargs="+", help="metrics.jsonl files written by runs")
    parser.add_argument("--labels", nargs="+", help="One name per file (default: each file's directory name).")
    parser.add_argument("-o", "--output", type=Path, default=Path("run.png"))
    args = parser.parse_args(argv)
    labels = args.labels or [str(m.parent.name or m) for m in args.metrics]
    if len(labels) != len(args.metrics):
        raise SystemExit(f"plot_run: {len(args.metrics)} files but {len(labels)} --labels")
    runs = {}
    for label, path in zip(labels, args.metrics):
        if not path.is_file():
            raise SystemExit(f"plot_run: file not found: {path}")
        runs[label] = read_metrics(path)
        if not runs[label]:
            raise SystemExit(f"plot_run: {path} has no rows")
    drawn = plot_runs(runs, args.output, labels[0] if len(runs) == 1 else " vs ".join(labels))
    print(f"wrote {args.output} ({sum(map(len, runs.values()))} rows; {', '.join(drawn)})", file=sys.stderr)


if __name__ == "__main__":
    main()
