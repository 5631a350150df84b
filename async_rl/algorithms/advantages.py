"""Advantage estimators: one scalar per response, broadcast over its tokens by the trainer."""

from __future__ import annotations

import torch


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Reward minus its group's mean, over (unbiased std + eps) when normalising.

    Groups are consecutive runs of `group_size` rewards. A group whose rewards are all equal gets zeros
    (its std is 0, so the numerator is exactly 0), never NaN.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"expected a 1-D tensor whose length is a multiple of {group_size}, got {tuple(rewards.shape)}")
    grouped = rewards.to(torch.float32).view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std and group_size > 1:
        centered = centered / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centered.view(-1)
