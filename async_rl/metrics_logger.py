"""Per-step metrics to `metrics.jsonl`, TensorBoard scalars and a one-line console summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

_SUMMARY = [
    ("rollout/reward_mean", "reward", "{:.3f}"),
    ("eval/reward_mean", "eval", "{:.3f}"),
    ("rollout/response_len_mean", "len", "{:.1f}"),
    ("perf/step_time_s", "step", "{:.2f}s"),
    ("perf/rollout_time_s", "rollout", "{:.2f}s"),
    ("perf/train_time_s", "train", "{:.2f}s"),
]


class MetricsLogger:
    def __init__(self, output_dir: str, tensorboard_dir: str | None = None):
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = (out / "metrics.jsonl").open("a", encoding="utf-8")
        self.writer = SummaryWriter(tensorboard_dir or str(out / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step)
        self.writer.flush()
        shown = [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in _SUMMARY if key in metrics]
        print(f"[step {step}] " + " | ".join(shown), flush=True)

    def close(self) -> None:
        self.jsonl.close()
        self.writer.close()
