"""A user-defined importance-sampling correction for --custom-tis-function-path tests."""

import torch


def halve(old_log_probs, rollout_log_probs, loss_mask):
    """Every token at half weight, whatever the ratio; reports how many tokens it saw."""
    weights = torch.full_like(old_log_probs, 0.5)
    return weights, {"tis_custom_tokens": loss_mask.sum().to(old_log_probs.dtype)}
