"""Policy losses (PPO-clip, GSPO, CISPO) with importance-sampling correction for the rollout policy, and the KL
penalty.

All per-token tensors are [batch, tokens]; `loss_mask` selects the response tokens that train.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
POLICY_LOSSES = ("ppo", "gspo", "cispo")
TIS_LEVELS = ("token", "sequence", "geometric")
TIS_MODES = ("truncate", "mask", "icepop")  # icepop: mask, with its own bounds (set by the flags)


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Reduce per-token values to a scalar over the masked tokens.

    `token_mean` weighs every token equally across the batch (DAPO); the `seq_mean_*` forms weigh every
    sequence equally (`seq_mean_token_sum` without length normalisation, as Dr. GRPO). Rows with no
    masked token contribute nothing.
    """
    mask = mask.to(values.dtype)
    if aggregation == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    per_seq = (values * mask).sum(dim=1)
    if aggregation == "seq_mean_token_mean":
        per_seq = per_seq / mask.sum(dim=1).clamp(min=1)
    elif aggregation != "seq_mean_token_sum":
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")
    return per_seq.sum() / max(values.shape[0], 1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def importance_weights(
    old_log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    upper: float,
    lower: float | None = None,
    level: str = "token",
    mode: str = "truncate",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Detached weights pi_old / pi_rollout that correct for sampling from the engine's policy.

    `level`: the ratio per token, per sequence (product over its tokens) or per sequence as the
    geometric mean over its tokens (length-normalised). `mode`: `truncate` caps the ratio at `upper`
    (TIS); `mask` keeps the ratio where it lies in [`lower`, `upper`] and zeroes the token or sequence
    elsewhere (masked importance sampling). Masked-out tokens still count in the loss denominator, so
    the normalisation does not depend on how many were dropped.
    """
    if level not in TIS_LEVELS or mode not in TIS_MODES:
        raise ValueError(f"importance sampling level {level!r} / mode {mode!r}; choose from {TIS_LEVELS} / {TIS_MODES}")
    mask = loss_mask.to(old_log_probs.dtype)
    log_ratio = ((old_log_probs - rollout_log_probs) * mask).detach()
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=1, keepdim=True).expand_as(mask)
    elif level == "geometric":
        log_ratio = (log_ratio.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)).expand_as(mask)
    log_upper = math.log(upper)
    if mode == "truncate":
        outside = log_ratio > log_upper
        weights = torch.exp(log_ratio.clamp(max=log_upper))  # clamp before exp: sequence ratios overflow
    else:
        log_lower = math.log(lower) if lower and lower > 0 else -math.inf
        outside = (log_ratio > log_upper) | (log_ratio < log_lower)
        weights = torch.where(outside, torch.zeros_like(log_ratio), torch.exp(log_ratio.clamp(max=log_upper)))
    stats = {
        "tis_weight_mean": _masked_mean(weights, mask),
        "tis_weight_max": torch.where(mask > 0, weights, torch.zeros_like(weights)).max(),
        "tis_capped_frac" if mode == "truncate" else "tis_masked_frac": _masked_mean(outside.to(mask.dtype), mask),
    }
    return weights, stats


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    rollout_log_probs: torch.Tensor | None = None,
    eps_clip: float = 0.2,
    eps_clip_high: float | None = None,
    tis_cap: float | None = None,
    aggregation: str = "token_mean",
    eps_clip_c: float | None = None,
    tis_level: str = "token",
    tis_mode: str = "truncate",
    tis_lower: float | None = None,
    tis_function: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
    kind: str = "ppo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A policy-gradient loss with bounds [1 - eps_clip, 1 + eps_clip_high], optional dual-clip and TIS.

    `kind` (r = exp(log_probs - old_log_probs) per token, A the advantage):
    - `ppo`: per token max(-A r, -A clip(r)).
    - `gspo` (Zheng et al., 2025): the same clipped objective on each sequence's length-normalised ratio
      s = exp(mean over its tokens of log r), which every token of the sequence carries (its gradient reaches
      each token as s / length); with `seq_mean_token_mean` aggregation this is the paper's sequence mean.
    - `cispo` (MiniMax-M1): REINFORCE weighted by the detached ratio clipped from above only,
      -A sg(min(r, 1 + eps_clip_high)) log_probs, so no token loses its gradient to clipping.
    With `eps_clip_c` set (PPO), tokens with A < 0 are further bounded by -A * eps_clip_c (dual-clip); with
    `tis_cap` set, the loss is multiplied by the detached importance weights of `importance_weights`, or of
    `tis_function(old_log_probs, rollout_log_probs, loss_mask) -> (weights, stats)` where one is given
    (`--custom-tis-function-path`).
    """
    if kind not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {kind!r}; choose from {POLICY_LOSSES}")
    eps_clip_high = eps_clip if eps_clip_high is None else eps_clip_high
    mask = loss_mask.to(log_probs.dtype)

    log_ratio = log_probs - old_log_probs
    token_ratio = torch.exp(log_ratio)
    if kind == "cispo":
        weight = token_ratio.detach().clamp(max=1 + eps_clip_high)
        per_token = -advantages * weight * log_probs
        clipped_tokens = token_ratio.detach() > 1 + eps_clip_high
    else:
        if kind == "gspo":
            lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
            ratio = torch.exp((log_ratio * mask).sum(dim=1, keepdim=True) / lengths).expand_as(log_ratio)
        else:
            ratio = token_ratio
        unclipped = -advantages * ratio
        clipped = -advantages * ratio.clamp(1 - eps_clip, 1 + eps_clip_high)
        per_token = torch.maximum(unclipped, clipped)
        clipped_tokens = clipped > unclipped
    stats = {
        "clip_frac": _masked_mean(clipped_tokens.to(mask.dtype), mask),
        "approx_kl": _masked_mean(-log_ratio.detach(), mask),
        "ratio_max_abs_dev": torch.where(mask > 0, (token_ratio.detach() - 1).abs(), torch.zeros_like(token_ratio)).max(),
    }
    if eps_clip_c is not None:
        bound = -advantages * eps_clip_c
        dual = (advantages < 0) & (per_token > bound)
        per_token = torch.where(dual, bound, per_token)
        stats["dual_clip_frac"] = _masked_mean(dual.to(mask.dtype), mask)
    if tis_cap is not None:
        if rollout_log_probs is None:
            raise ValueError("tis_cap is set but rollout_log_probs is None")
        if tis_function is not None:
            weights, tis_stats = tis_function(old_log_probs.detach(), rollout_log_probs, loss_mask)
        else:
            weights, tis_stats = importance_weights(
                old_log_probs, rollout_log_probs, loss_mask, upper=tis_cap, lower=tis_lower, level=tis_level, mode=tis_mode
            )
        per_token = per_token * weights.detach()
        stats |= tis_stats
    return aggregate(per_token, mask, aggregation), {k: v.detach() for k, v in stats.items()}


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3; low_var_kl, as slime and
    verl name it, is k3 clamped to [-10, 10])."""
    log_ratio = log_probs - ref_log_probs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind in ("k3", "low_var_kl"):
        k3 = torch.exp(-log_ratio) + log_ratio - 1
        return k3.clamp(-10, 10) if kind == "low_var_kl" else k3
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2, k3 or low_var_kl")

