"""The learning rate of each optimizer step: linear warm-up, then constant, linear or cosine decay (Megatron's
`--lr-decay-style`, `--lr-warmup-iters`, `--lr-decay-iters`, `--min-lr`), counted in applied optimizer steps."""

from __future__ import annotations

import math

from async_rl.config.sections import TrainConfig


def learning_rate(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Rate of optimizer step `step` (0-based). Warm-up reaches --lr at its last step, so the first step is not
    taken at 0; decay runs from the end of the warm-up to --lr-decay-iters (default `total_steps`)."""
    warmup = cfg.lr_warmup_iters
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_decay_style == "constant":
        return cfg.lr
    decay_end = cfg.lr_decay_iters or total_steps
    progress = min(1.0, (step - warmup) / max(1, decay_end - warmup))
    shape = 1 - progress if cfg.lr_decay_style == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * shape
