"""Log-probs and entropies from logits split over the vocabulary across tensor-parallel ranks.

Each rank holds logits for its slice of the vocabulary; the full [tokens, vocab] tensor is never built.
Three all-reduces over the tensor-parallel group give the global max (for stability), the partition
function and the target's logit. The sums use Megatron's reduce-from-model-parallel mapping, whose
backward is the identity: every rank computes the same loss, and each backpropagates into its own slice.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def vocab_parallel_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, *, with_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(target) for float32 `logits` [..., vocab / tp] (this rank's slice) and global `targets` [...]."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region as tp_sum

    part = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * part
    with torch.no_grad():
        peak = logits.max(-1, keepdim=True).values
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    shifted = logits - peak
    exp = shifted.exp()
    log_z = tp_sum(exp.sum(-1)).log()
    local = targets - start
    inside = (local >= 0) & (local < part)
    target_logit = tp_sum(shifted.gather(-1, local.clamp(0, part - 1)[..., None]).squeeze(-1) * inside)
    log_probs = target_logit - log_z
    if not with_entropy:
        return log_probs
    # H = log Z - E_p[shifted logit]
    entropy = log_z - tp_sum((exp * shifted).sum(-1)) / log_z.exp()
    return log_probs, entropy
