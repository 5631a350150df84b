"""A linear layer with FP8 numerics, so the local engine shows what an FP8 SGLang engine computes.

Weights are stored as E4M3 + float32 scales in the checkpoint layout of the chosen granularity (block:
`weight_scale_inv` per 128 x 128 block, activations per token and 128 channels; channel: `weight_scale` per
output row, activations per token). The matmul itself runs in the activation dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from async_rl.weights.fp8 import activation_group_size, dequantize, quantize_activations, quantize_many, scale_name


class Fp8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, granularity: str):
        super().__init__()
        self.granularity = granularity
        self.scale_attr = scale_name("weight", granularity)
        [(q, scale)] = quantize_many([linear.weight.detach()], granularity)
        self.register_buffer("weight", q)
        self.register_buffer(self.scale_attr, scale)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.weight, getattr(self, self.scale_attr), self.granularity, dtype=x.dtype)
        x = quantize_activations(x, activation_group_size(self.granularity, x.shape[-1]))
        return nn.functional.linear(x, weight, self.bias)


def convert_to_fp8(model: nn.Module, quantizable, granularity: str) -> list[str]:
    """Replace the linear layers whose weight name `quantizable(name, weight)` accepts; returns their names."""
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and quantizable(f"{name}.weight", module.weight)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Fp8Linear(module, granularity))
    return [name for name, _ in targets]
