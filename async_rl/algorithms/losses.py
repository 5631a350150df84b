"""PPO-clip policy loss with truncated importance sampling, and the KL penalty."""

from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Reduce per-token values [batch, tokens] to a scalar over the masked tokens.

    `token_mean` weighs every token equally across the batch (DAPO); the `seq_mean_*` forms weigh every
    sequence equally. Rows with no masked token contribute nothing.
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


def tis_weights(old_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_old / pi_rollout, cap), detached: corrects for sampling from the engine's (quantized, stale) policy."""
    return torch.exp(old_log_probs - rollout_log_probs).clamp(max=cap).detach()


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip with asymmetric bounds and optional TIS; all tensors are [batch, tokens]."""
    eps_clip_high = eps_clip if eps_clip_high is None else eps_clip_high
    mask = loss_mask.to(log_probs.dtype)
    n_tokens = mask.sum().clamp(min=1)

    log_ratio = log_probs - old_log_probs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - eps_clip, 1 + eps_clip_high)
    per_token = torch.maximum(unclipped, clipped)

    stats = {
        "clip_frac": ((clipped > unclipped).to(mask.dtype) * mask).sum() / n_tokens,
        "approx_kl": ((-log_ratio).detach() * mask).sum() / n_tokens,
    }
    if tis_cap is not None:
        if rollout_log_probs is None:
            raise ValueError("tis_cap is set but rollout_log_probs is None")
        weights = tis_weights(old_log_probs, rollout_log_probs, tis_cap)
        per_token = per_token * weights
        raw = torch.exp(old_log_probs - rollout_log_probs).detach()
        stats["tis_weight_mean"] = (weights * mask).sum() / n_tokens
        stats["tis_weight_max"] = torch.where(mask > 0, weights, torch.zeros_like(weights)).max()
        stats["tis_capped_frac"] = ((raw > tis_cap).to(mask.dtype) * mask).sum() / n_tokens
    return aggregate(per_token, mask, aggregation), {k: v.detach() for k, v in stats.items()}


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3)."""
    log_ratio = log_probs - ref_log_probs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")
