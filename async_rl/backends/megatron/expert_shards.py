"""Experts split over expert-parallel ranks.

Megatron numbers the experts a rank holds 0..local-1 in its parameter names; Hugging Face names and the
weight stream number them globally, and rank r of the expert-parallel group holds r*local .. r*local+local-1.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

_EXPERT = re.compile(r"(.*\.mlp\.experts\.local_experts\.)(\d+)(\..*)")


def global_name(name: str, ep_rank: int, local: int) -> str:
    """The globally numbered name of one of this rank's expert parameters (other names unchanged)."""
    match = _EXPERT.match(name)
    return name if match is None else f"{match[1]}{ep_rank * local + int(match[2])}{match[3]}"


def gather(name: str, params: dict[str, torch.nn.Parameter], ep_rank: int, local: int, group) -> torch.Tensor | None:
    """Global expert parameter `name`, broadcast from the rank that holds it; None for a non-expert name.

    Every rank of the expert-parallel group must ask for the same names in the same order."""
    match = _EXPERT.match(name)
    if match is None:
        return None
    owner, index = divmod(int(match[2]), local)
    mine = params[f"{match[1]}{index}{match[3]}"].detach()
    tensor = mine.clone() if ep_rank == owner else torch.empty_like(mine)
    dist.broadcast(tensor, src=dist.get_global_rank(group, owner), group=group)
    return tensor
