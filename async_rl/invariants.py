"""Correctness invariants checked under `--check-invariants`: cheap, and they catch the silent bugs of RL systems.

- First step of a run: the trainer's log-probs of on-policy samples equal the rollout engine's (weights
  reached the engine, both sides compute the same distribution), and the PPO ratio of the first optimizer
  step is exactly 1 (old and new log-probs come from the same weights).
- After `--load`: the loss and gradient norm on the checkpoint's probe batch equal those recorded at save
  time (weights restored exactly); under another parallel layout within FP32 reduction-order noise, and not
  compared in BF16.
"""

from __future__ import annotations

import math

from async_rl.errors import TrainingAborted
from async_rl.sample import Sample

RATIO_TOL = 1e-5
PROBE_REL_TOL = 1e-6  # the same parallel layout sums in the same order: equal up to the last bits
# another layout (tensor, expert or data parallel size) sums in another order: FP32 results move by a few 1e-6
RELAYOUT_REL_TOL, RELAYOUT_ABS_TOL = 1e-4, 1e-6


class InvariantViolation(TrainingAborted):
    """A correctness invariant failed; the message says which and by how much."""


def check_first_step(step: int, samples: list[Sample], metrics: dict[str, float], *, quantized_rollout: bool,
                     logprob_tol: float) -> list[str]:
    """Raise on a failed first-step invariant; returns the names of the checks that ran."""
    checked = ["ppo_ratio"]
    deviation = metrics["train/first_step_ratio_max_abs_dev"]
    if deviation > RATIO_TOL:
        raise InvariantViolation(
            f"step {step}: the PPO ratio of the first optimizer step deviates from 1 by {deviation:.3g} "
            f"(> {RATIO_TOL}); old and new log-probs do not come from the same weights"
        )
    on_policy = all(s.weight_version == step for s in samples)
    if on_policy and not quantized_rollout:
        checked.append("rollout_logprobs")
        diff = metrics["train/rollout_logprob_abs_diff"]
        if diff > logprob_tol:
            raise InvariantViolation(
                f"step {step}: trainer and rollout log-probs differ by {diff:.3g} per token on average "
                f"(> --invariant-logprob-tol {logprob_tol}); the engine does not run the trainer's weights"
            )
    return checked


def probe_tolerance(saved_layout: dict[str, int] | None, layout: dict[str, int] | None, bf16: bool) -> tuple[float, float] | None:
    """(relative, absolute) tolerance of the probe comparison after a load; None for BF16 under another layout,
    whose reordered sums move the probe far more than FP32 noise, by an amount not measured against wrong weights."""
    if saved_layout == layout:
        return PROBE_REL_TOL, 1e-12
    return None if bf16 else (RELAYOUT_REL_TOL, RELAYOUT_ABS_TOL)


def check_probe(recorded: dict[str, float], recomputed: dict[str, float], checkpoint: str,
                tolerance: tuple[float, float] = (PROBE_REL_TOL, 1e-12)) -> None:
    rel_tol, abs_tol = tolerance
    for key in ("loss", "grad_norm"):
        if not math.isclose(recorded[key], recomputed[key], rel_tol=rel_tol, abs_tol=abs_tol):
            raise InvariantViolation(
                f"--load {checkpoint}: probe {key} is {recomputed[key]!r} after loading but was {recorded[key]!r} "
                f"when saved (relative tolerance {rel_tol:g}); the checkpoint did not restore the same weights"
            )
