"""One vocabulary of parameter names for both layer specs: the local spec's.

Transformer Engine fuses each RMSNorm into the linear layer after it (`linear_qkv.layer_norm_weight` is the
local spec's `input_layernorm.weight`, `mlp.linear_fc1.layer_norm_weight` its `pre_mlp_layernorm.weight`)
and its grouped-GEMM experts hold one weight per expert on a shared module (`mlp.experts.linear_fc1.weight3`
is `mlp.experts.local_experts.3.linear_fc1.weight`). The Hugging Face mapping, tensor-parallel sharding and
expert numbering are written once, against local names; `local_tensors` gives them any model.
"""

from __future__ import annotations

import re

import torch

_RULES = [
    (re.compile(r"(.*)\.self_attention\.linear_qkv\.layer_norm_weight$"), r"\1.input_layernorm.weight"),
    (re.compile(r"(.*)\.mlp\.linear_fc1\.layer_norm_weight$"), r"\1.pre_mlp_layernorm.weight"),
    (re.compile(r"(.*)\.self_attention\.linear_q_up_proj\.layer_norm_weight$"), r"\1.self_attention.q_layernorm.weight"),
    (re.compile(r"(.*)\.self_attention\.linear_kv_up_proj\.layer_norm_weight$"), r"\1.self_attention.kv_layernorm.weight"),
    (re.compile(r"(.*\.mlp\.experts)\.(linear_fc[12])\.weight(\d+)$"), r"\1.local_experts.\3.\2.weight"),
]


def local_name(name: str) -> str:
    """The local spec's name of a parameter of either spec."""
    for pattern, replacement in _RULES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return name


_STATE_BUFFERS = ("mlp.router.expert_bias",)  # buffers an HF checkpoint holds too (e_score_correction_bias)


def local_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters, and the buffers a Hugging Face checkpoint also holds, under local-spec names."""
    state = {local_name(name): param for name, param in model.named_parameters()}
    return state | {local_name(name): buffer for name, buffer in model.named_buffers() if name.endswith(_STATE_BUFFERS)}
