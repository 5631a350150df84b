"""How far the trainer's policy is from the one that sampled the rollout, token by token.

With r = p_trainer / p_rollout on the sampled tokens (expectations under the rollout policy, which drew them):
KL(rollout || trainer) by the k1 estimator E[-log r] and the k3 estimator E[r - 1 - log r] (unbiased, never
negative), the chi-square divergence E[(r - 1)^2], the effective sample size of the importance weights as a
fraction of the tokens, (sum r)^2 / (n sum r^2), and the fraction of tokens whose ratio lies outside [0.5, 2].
Quantized (FP8) or stale rollouts move all of them off their on-policy values (0, 0, 0, 1, 0).
"""

from __future__ import annotations

import logging

import torch

from async_rl.errors import TrainingAborted

logger = logging.getLogger(__name__)

MAX_LOG_RATIO = 20.0  # a token the trainer finds e^20 likelier than the engine did counts as e^20


def mismatch_sums(trainer_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Sums over the masked tokens of one micro-batch; summed over micro-batches and ranks, then `mismatch_metrics`."""
    m = mask.float()
    log_ratio = (trainer_log_probs - rollout_log_probs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    return {
        "tokens": float(m.sum()),
        "abs_diff": float((log_ratio.abs() * m).sum()),
        "k1": float((-log_ratio * m).sum()),
        "k3": float(((ratio - 1 - log_ratio) * m).sum()),
        "ratio": float((ratio * m).sum()),
        "ratio_sq": float((ratio.square() * m).sum()),
        "outside": float((((ratio < 0.5) | (ratio > 2.0)).float() * m).sum()),
    }


def mismatch_metrics(sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["tokens"], 1.0)
    chi2 = (sums["ratio_sq"] - 2 * sums["ratio"] + sums["tokens"]) / n
    return {
        "mismatch/kl_k1": sums["k1"] / n,
        "mismatch/kl_k3": sums["k3"] / n,
        "mismatch/chi2": max(chi2, 0.0),
        "mismatch/ess_frac": sums["ratio"] ** 2 / (n * sums["ratio_sq"]) if sums["ratio_sq"] else 1.0,
        "mismatch/ratio_outside_frac": sums["outside"] / n,
    }


class MismatchAlert:
    """`--mismatch-alert-k3`: the k3 KL above its bound for `steps` steps in a row warns, or ends the run."""

    def __init__(self, bound: float | None, steps: int, stop: bool):
        self.bound, self.steps, self.stop = bound, steps, stop
        self.above = 0

    def observe(self, step: int, metrics: dict[str, float]) -> None:
        k3 = metrics.get("mismatch/kl_k3")
        if self.bound is None or k3 is None:
            return
        self.above = self.above + 1 if k3 > self.bound else 0
        if self.above < self.steps:
            return
        message = (f"mismatch/kl_k3 above --mismatch-alert-k3 {self.bound:g} for {self.above} steps in a row "
                   f"({k3:.4g} at step {step}): the rollout policy has drifted from the trainer's (FP8 scales, "
                   "staleness, a weight push that did not land)")
        if self.stop:
            raise TrainingAborted(message + "; stopped by --mismatch-alert-action stop")
        logger.warning(message)
