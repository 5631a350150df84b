"""How much of rollout the async loop hides behind training, and what staleness it costs.

Runs the embedded default under the sync loop (the baseline) and under async variants in the same
invocation, and prints mean per-step timings over steps 1.. (step 0 includes start-up) with each
step time as a ratio of the sync step:

    python benchmarks/async_pipeline.py --model-dir outputs/tiny_model --num-rollout 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from embedded_run import REPO, run_embedded

RUNS = {
    "sync (baseline)": [],
    "async, --max-staleness 1": ["--async"],
    "async, --max-staleness 2": ["--async", "--max-staleness", "2"],
    "async, --max-staleness 1 --partial-rollout": ["--async", "--partial-rollout"],
}
COLUMNS = {
    "step s": "perf/step_time_s", "rollout s": "perf/rollout_time_s", "train s": "perf/train_time_s",
    "wait s": "perf/rollout_wait_s", "push s": "perf/update_weights_time_s", "overlap": "perf/overlap_ratio",
    "staleness": "rollout/staleness_mean", "interrupted/step": "rollout/partial_aborted_samples",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=REPO / "outputs" / "tiny_model")
    parser.add_argument("--num-rollout", type=int, default=40)
    args = parser.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(RUNS.items()):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows = run_embedded(args.model_dir, Path(tmp) / str(i), args.num_rollout, extra)
            steps = [r for r in rows if "perf/step_time_s" in r and r["step"] >= 1]
            evals = [r["eval/reward_mean"] for r in rows if "eval/reward_mean" in r]
            table[name] = {col: statistics.fmean(r.get(key, 0.0) for r in steps) for col, key in COLUMNS.items()}
            table[name]["eval"] = f"{evals[0]:.3f} -> {evals[-1]:.3f}"
    base = table["sync (baseline)"]["step s"]
    print("| loop | " + " | ".join(COLUMNS) + " | step vs sync | eval reward |")
    print("|---|" + "---:|" * (len(COLUMNS) + 1) + "---|")
    for name, row in table.items():
        cells = " | ".join(f"{row[c]:.3f}" if c.endswith(" s") else f"{row[c]:.2f}" for c in COLUMNS)
        print(f"| {name} | {cells} | {row['step s'] / base:.2f}x | {row['eval']} |")


if __name__ == "__main__":
    main()
