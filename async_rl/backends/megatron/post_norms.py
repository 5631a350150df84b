"""GLM-4's sandwich norms on megatron-core's layer specs.

A GLM-4 layer normalizes the attention output and the MLP output again before each residual add
(`post_self_attn_layernorm`, `post_mlp_layernorm`). megatron-core's layer has no slot for them, so the
projection that ends each block (`linear_proj`, `linear_fc2`) becomes that projection followed by an RMSNorm:
with tensor parallelism the row-parallel projection's output is already summed over the ranks, so the norm sees
whole hidden vectors. Their parameters are `<proj>.linear.*` and `<proj>.norm.weight`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module


class ProjectionThenNorm(MegatronModule):
    def __init__(self, *args: Any, linear: Any, norm: Any, config: Any, **kwargs: Any):
        super().__init__(config)
        self.linear = build_module(linear, *args, config=config, **kwargs)
        self.norm = build_module(norm, config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
        out, bias = self.linear(hidden)
        if bias is not None:  # skip_bias_add: the norm must see the biased output
            out = out + bias
        return self.norm(out), None


def with_post_norms(spec: ModuleSpec, norm: Any) -> ModuleSpec:
    """A copy of a dense layer spec whose attention and MLP outputs each pass through `norm` (a norm class)."""
    spec = copy.deepcopy(spec)
    for block, name in ((spec.submodules.self_attention, "linear_proj"), (spec.submodules.mlp, "linear_fc2")):
        setattr(block.submodules, name, ModuleSpec(module=ProjectionThenNorm,
                                                   params={"linear": getattr(block.submodules, name), "norm": norm}))
    return spec
