"""Shared by the embedded-task benchmarks: one training run of the embedded default in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_embedded(model_dir: Path, output_dir: Path, num_rollout: int, extra: list[str]) -> list[dict]:
    """Train `configs/embedded_cpu.yaml` plus `extra` flags; returns the rows of its metrics.jsonl."""
    cmd = [
        sys.executable, "-m", "async_rl.train", "--config", str(REPO / "configs" / "embedded_cpu.yaml"),
        "--hf-checkpoint", str(model_dir), "--prompt-data", str(model_dir / "data" / "train.jsonl"),
        "--eval-prompt-data", "arithmetic", str(model_dir / "data" / "eval.jsonl"),
        "--output-dir", str(output_dir), "--num-rollout", str(num_rollout), *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
