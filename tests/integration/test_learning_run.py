"""benchmarks/gpu_learning_run.py on the CPU (local engine, torch trainer, tiny model, two steps): every arm that
runs without a GPU trains (all at once, as `--parallel` runs them on a GPU), and the table and the overlaid plot
come from the runs' own metrics; a second seed runs beside the first and each arm is summarized over its seeds."""

import json
import subprocess
import sys

from tests.conftest import REPO, assert_drawn


def test_the_learning_run_trains_every_arm_and_reports_them(tmp_path):
    out = tmp_path / "learning_run"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_learning_run.py"), "--output-dir", str(out), "--cpu",
           "--num-rollout", "2", "--eval-interval", "1", "--rollout-batch-size", "4"]
    # the default arms and the masked-importance-sampling arm, which runs only when asked for
    arms = ["bf16-sync", "fp8-tis-async", "fp8-async-no-tis", "fp8-tis-async-partial", "fp8-mis-async"]
    result = subprocess.run(cmd + ["--arms", "fp8-tis-async-fp8", *arms, "--parallel"], capture_output=True, text=True,
                            cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ") and " | eval start" not in line]
    assert [line.split(" | ")[0][2:] for line in table[: len(arms)]] == arms
    assert "[fp8-tis-async-fp8] skipped: FP8 training needs Transformer Engine" in result.stderr
    assert_drawn(out / "runs.png")
    for arm in arms:
        assert (out / arm / "metrics.jsonl").is_file()
    masked = [json.loads(line) for line in (out / "fp8-mis-async" / "metrics.jsonl").read_text().splitlines()]
    trained = [row for row in masked if "train/loss" in row]
    assert len(trained) == 2 and all("train/tis_masked_frac" in row for row in trained)
    # a second seed: seed 1's run is kept, seed 2's runs beside it, and the arm is summarized over both
    again = subprocess.run(cmd + ["--arms", "bf16-sync", "--seeds", "1", "2"], capture_output=True, text=True, cwd=REPO,
                           timeout=600)
    assert again.returncode == 0 and f"[bf16-sync] already complete in {out / 'bf16-sync'}" in again.stderr
    assert (out / "bf16-sync.seed2" / "metrics.jsonl").is_file()
    seeds_table = again.stdout.split("over seeds:")[1]
    assert "| bf16-sync | 2 | " in seeds_table and "| fp8-tis-async | 1 | " in seeds_table
