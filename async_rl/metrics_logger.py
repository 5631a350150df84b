"""Per-step metrics to `metrics.jsonl`, TensorBoard scalars, optionally Weights & Biases, and a console line."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from async_rl.errors import UserInputError

_SUMMARY = [
    ("rollout/reward_mean", "reward", "{:.3f}"),
    ("eval/reward_mean", "eval", "{:.3f}"),
    ("rollout/response_len_mean", "len", "{:.1f}"),
    ("perf/step_time_s", "step", "{:.2f}s"),
    ("perf/rollout_time_s", "rollout", "{:.2f}s"),
    ("perf/train_time_s", "train", "{:.2f}s"),
    ("perf/overlap_ratio", "rollout hidden", "{:.0%}"),  # async: the share of generation training hid
    ("rollout/staleness_mean", "staleness", "{:.2f}"),  # async: weight versions behind, on average
]


@dataclass(frozen=True)
class WandbSettings:
    project: str
    mode: str  # offline by default: runs on clusters without internet, synced later with `wandb sync`
    config: dict[str, Any]
    group: str | None = None
    team: str | None = None


class MetricsLogger:
    """`resume_step`: a run resumed from a checkpoint of that many steps logs those steps again, so the rows and
    TensorBoard points a crashed run wrote after its checkpoint are dropped first (no doubled points in plots)."""

    def __init__(self, output_dir: str, tensorboard_dir: str | None = None, wandb: WandbSettings | None = None,
                 resume_step: int | None = None):
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            _drop_rows_from(out / "metrics.jsonl", resume_step)
        self.jsonl = (out / "metrics.jsonl").open("a", encoding="utf-8")
        self.writer = SummaryWriter(tensorboard_dir or str(out / "tensorboard"), purge_step=resume_step)
        self.wandb_run = _start_wandb(wandb, out) if wandb else None
        self._carried: dict[str, float] = {}

    def carry(self, metrics: dict[str, float]) -> None:
        """Metrics known before any step (the start-up's split): logged with the next step's."""
        self._carried |= metrics

    def log(self, step: int, metrics: dict[str, float]) -> None:
        metrics, self._carried = self._carried | metrics, {}
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), step)
        self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: float(v) for k, v in metrics.items()}, step=step)
        shown = [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in _SUMMARY if key in metrics]
        print(f"[step {step}] " + " | ".join(shown), flush=True)

    def close(self) -> None:
        self.jsonl.close()
        self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _drop_rows_from(path: Path, step: int) -> None:
    """Rewrite `path` without its rows of `step` and later (a temporary file, then a rename)."""
    if not path.is_file():
        return
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [row for row in rows if not row.strip() or json.loads(row)["step"] < step]
    if len(kept) == len(rows):
        return
    staging = path.with_name(path.name + ".tmp")
    staging.write_text("".join(kept), encoding="utf-8")
    os.replace(staging, path)


def _start_wandb(settings: WandbSettings, output_dir: Path):
    try:
        import wandb
    except ImportError:
        raise UserInputError("--use-wandb needs the wandb package: pip install wandb") from None
    return wandb.init(project=settings.project, mode=settings.mode, dir=str(output_dir), config=settings.config,
                      group=settings.group, entity=settings.team)
