"""Does TIS keep learning on track when the rollout policy differs from the trainer's?

Runs the embedded default (same seed, same steps) under rollout/trainer mismatches, with and without
TIS, and prints the eval reward curve of each next to the on-policy BF16 baseline of the same run:

    python benchmarks/tis_mismatch.py --model-dir outputs/tiny_model --num-rollout 60

Mismatches: FP8 (E4M3 blockwise) rollout weights, and one-step staleness (the async loop).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from embedded_run import run_embedded

RUNS = {
    "full precision, on-policy (baseline)": ["--use-tis"],
    "fp8 rollout, no TIS": ["--no-use-tis", "--rollout-quantization", "fp8"],
    "fp8 rollout, TIS 2.0": ["--use-tis", "--rollout-quantization", "fp8"],
    "async (1 stale), no TIS": ["--no-use-tis", "--async"],
    "async (1 stale), TIS 2.0": ["--use-tis", "--async"],
}


def eval_curve(model_dir: Path, output_dir: Path, num_rollout: int, extra: list[str]) -> tuple[dict[int, float], float]:
    rows = run_embedded(model_dir, output_dir, num_rollout, extra)
    diffs = [r["train/rollout_logprob_abs_diff"] for r in rows if "train/rollout_logprob_abs_diff" in r]
    return {r["step"]: r["eval/reward_mean"] for r in rows if "eval/reward_mean" in r}, sum(diffs) / len(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="A model built by tools/make_tiny_model.py.")
    parser.add_argument("--num-rollout", type=int, default=60)
    args = parser.parse_args()
    model_dir = Path(args.model_dir)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(RUNS.items()):
            print(f"[{i + 1}/{len(RUNS)}] {name}", file=sys.stderr, flush=True)
            results[name] = eval_curve(model_dir, Path(tmp) / str(i), args.num_rollout, extra)
    steps = sorted(next(iter(results.values()))[0])
    baseline = results["full precision, on-policy (baseline)"][0][steps[-1]]
    print("| run | mean abs(log p_trainer - log p_rollout) | " + " | ".join(f"eval@{s}" for s in steps)
          + " | final / baseline |")
    print("|---|---:|" + "---:|" * len(steps) + "---:|")
    for name, (curve, diff) in results.items():
        cells = " | ".join(f"{curve[s]:.3f}" for s in steps)
        print(f"| {name} | {diff:.4f} | {cells} | {curve[steps[-1]] / baseline:.2f} |")


if __name__ == "__main__":
    main()
