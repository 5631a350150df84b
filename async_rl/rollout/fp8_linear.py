"""A linear layer with FP8 numerics, so the local engine shows what an FP8 SGLang engine computes.

Weights are stored as blockwise E4M3 + float32 `weight_scale_inv` (the checkpoint layout); activations
are rounded through E4M3 per token and 128 channels. The matmul itself runs in the activation dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from async_rl.weights.fp8 import dequantize_blockwise, quantize_activations, quantize_blockwise


class Fp8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, scale_inv = quantize_blockwise(linear.weight.detach())
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale_inv", scale_inv)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize_blockwise(self.weight, self.weight_scale_inv, dtype=x.dtype)
        return nn.functional.linear(quantize_activations(x), weight, self.bias)


def convert_to_fp8(model: nn.Module, quantizable) -> list[str]:
    """Replace the linear layers whose weight name `quantizable(name, weight)` accepts; returns their names."""
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and quantizable(f"{name}.weight", module.weight)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Fp8Linear(module))
    return [name for name, _ in targets]
