"""Advantage estimators: one scalar per response, broadcast over its tokens by the trainer.

All take a 1-D tensor of sequence rewards laid out group after group (`group_size` consecutive samples
answer one prompt) and return a tensor of the same shape.
"""

from __future__ import annotations

from typing import Callable

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"expected a 1-D tensor whose length is a multiple of {group_size}, got {tuple(rewards.shape)}")
    return rewards.to(torch.float32).view(-1, group_size)


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Reward minus its group's mean, over (unbiased std + eps) when normalising.

    A group whose rewards are all equal gets zeros (its numerator is exactly 0), never NaN.
    """
    grouped = _grouped(rewards, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std and group_size > 1:
        centered = centered / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centered.view(-1)


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO: the group-centred reward without the std division, which biases towards easy/hard prompts.

    Its other half, no per-sequence length normalisation, is the `seq_mean_token_sum` aggregation.
    """
    return grpo_advantages(rewards, group_size, normalize_std=False)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out: reward minus the mean of the other samples of its group."""
    if group_size < 2:
        raise ValueError("RLOO needs at least two samples per prompt")
    grouped = _grouped(rewards, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).view(-1)


def reinforce_plus_plus_advantages(rewards: torch.Tensor, group_size: int, *, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++: rewards normalised over the whole batch (mean and std), not per group."""
    flat = _grouped(rewards, group_size).view(-1)
    if flat.numel() < 2:
        return flat - flat.mean()
    return (flat - flat.mean()) / (flat.std(unbiased=True) + eps)


def reinforce_plus_plus_baseline_advantages(rewards: torch.Tensor, group_size: int, *, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++ with a group baseline: subtract the group mean, then normalise over the batch."""
    centered = dr_grpo_advantages(rewards, group_size)
    if centered.numel() < 2:
        return centered
    return centered / (centered.std(unbiased=True) + eps)


ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_plus_plus": reinforce_plus_plus_advantages,
    "reinforce_plus_plus_baseline": reinforce_plus_plus_baseline_advantages,
}


def compute_advantages(estimator: str, rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True) -> torch.Tensor:
    """Dispatch on `--advantage-estimator`; `normalize_std` applies to GRPO only. `gspo` and `cispo` (slime's names
    for their losses) use GRPO's advantages."""
    if estimator in ("grpo", "gspo", "cispo"):
        return grpo_advantages(rewards, group_size, normalize_std=normalize_std)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator](rewards, group_size)


def overlong_penalty(response_lengths: torch.Tensor, max_response_len: int, buffer_len: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward.

    0 up to `max_response_len - buffer_len` tokens, then falling linearly to `-factor` at the limit.
    """
    expected = max_response_len - buffer_len
    excess = (response_lengths.to(torch.float32) - expected).clamp(min=0)
    return -(excess / buffer_len * factor).clamp(max=factor)
