"""Weight pushes into SGLang engines that serve channelwise FP8 (`w8a8_fp8`) weights.

Once weights are loaded, SGLang's W8A8-FP8 linear method replaces each layer's weight by its transpose
(the layout CUTLASS reads) in a new parameter that has lost the loader which knows fused QKV and gate/up
shards and tensor-parallel slices, so a plain `update_weights_from_tensor` cannot reach it. The transpose
is a view of the loaded storage: for the duration of a load, this puts loader-carrying views of that same
storage back, so the model's own `load_weights` writes the pushed FP8 bytes and scales straight into what
the kernel reads. SGLang runs it inside the engine for pushes made with `load_format=LOAD_FORMAT` once
the engine lists it in `custom_weight_loader`.
"""

from __future__ import annotations

from typing import Sequence

import torch

LOAD_FORMAT = f"{__name__}.load_weights"


def load_weights(model: torch.nn.Module, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
    from sglang.srt.layers.quantization.w8a8_fp8 import W8A8Fp8LinearMethod

    swapped = [m for m in model.modules() if isinstance(getattr(m, "quant_method", None), W8A8Fp8LinearMethod)]
    served = [(m.weight, m.weight_scale) for m in swapped]
    for module in swapped:
        module.weight = _loadable(module.weight.t(), module, output_dim=0, input_dim=1)
        module.weight_scale = _loadable(module.weight_scale, module, output_dim=0)
    try:
        model.load_weights(named_tensors)
    finally:
        for module, (weight, scale) in zip(swapped, served):
            module.weight, module.weight_scale = weight, scale


def _loadable(view: torch.Tensor, module: torch.nn.Module, **dims: int) -> torch.nn.Parameter:
    """A parameter sharing `view`'s storage, with the layer's loader and the dims it slices along."""
    param = torch.nn.Parameter(view, requires_grad=False)
    param.weight_loader = module.weight_loader
    for key, value in dims.items():
        setattr(param, key, value)
    return param
