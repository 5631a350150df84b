"""Full (Hugging Face-shaped) Megatron tensors <-> this rank's tensor-parallel shard.

Megatron marks each split parameter with `tensor_model_parallel` and its `partition_dim`; a plain split
along that dimension is the shard, except for the fused gate/up projection (`linear_fc1` of a gated
MLP or of each expert): each rank holds [its gate rows; its up rows], so gate and up are split separately.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _gated(name: str) -> bool:
    return name.endswith("linear_fc1.weight")


def shard(name: str, full: torch.Tensor, param: torch.nn.Parameter, rank: int, size: int) -> torch.Tensor:
    """This rank's part of `full` for `param`."""
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if full.shape[dim] % size:
        raise ValueError(f"{name}: dimension {dim} of size {full.shape[dim]} does not split over {size} tensor-parallel ranks")
    if _gated(name):
        return torch.cat([half.chunk(size, dim)[rank] for half in full.chunk(2, dim)], dim)
    return full.chunk(size, dim)[rank]


def gather(name: str, param: torch.nn.Parameter, group, size: int) -> torch.Tensor:
    """The full tensor of a (possibly split) parameter; a collective over `group` when it is split."""
    local = param.detach()
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    dim = param.partition_dim
    if _gated(name):
        halves = [p.chunk(2, dim) for p in parts]
        return torch.cat([torch.cat([h[0] for h in halves], dim), torch.cat([h[1] for h in halves], dim)], dim)
    return torch.cat(parts, dim)
