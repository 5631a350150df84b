"""FP8 (E4M3) weight quantization in the two layouts SGLang loads from a checkpoint.

- `block` (DeepSeek-V3 layout, `quant_method: fp8`): each 128 x 128 block of a linear weight W (out x in)
  is float8_e4m3fn values q with one float32 `weight_scale_inv` per block, W ~= q * scale_inv; activations
  are quantized per token and 128 channels. Its GEMM is DeepGEMM on Hopper, a Triton kernel without it.
- `channel` (`quant_method: w8a8_fp8`): one float32 `weight_scale` per output row, activations per token.
  Its GEMM is CUTLASS's scaled-mm, fast on Hopper with no extra package.

The plain-torch versions here run anywhere and are the reference for faster kernels.
"""

from __future__ import annotations

import math

import torch

FP8_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def _blocked(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """W padded with zeros to whole blocks, viewed as [row_blocks, block, col_blocks, block]."""
    rows, cols = w.shape
    row_blocks, col_blocks = math.ceil(rows / block_size), math.ceil(cols / block_size)
    padded = torch.zeros(row_blocks * block_size, col_blocks * block_size, dtype=torch.float32, device=w.device)
    padded[:rows, :cols] = w.to(torch.float32)
    return padded.view(row_blocks, block_size, col_blocks, block_size), (rows, cols)


def round_up_to_power_of_two(x: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= x, for positive float32 x, by exponent arithmetic (exact, no log2)."""
    bits = x.view(torch.int32)
    exponent = bits & 0x7F800000
    return torch.where((bits & 0x007FFFFF) == 0, exponent, exponent + (1 << 23)).view(torch.float32)


def quantize_blockwise(w: torch.Tensor, block_size: int = 128, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale_inv): q float8_e4m3fn of w's shape, scale_inv float32 [ceil(out/128), ceil(in/128)].

    Each block's largest magnitude maps to 448. With `pow2_scale` the scale is rounded up to a power of
    two (E8M0-representable), so the block's maximum still fits. An all-zero block gets scale_inv 1.
    CUDA tensors go through the fused Triton kernel when Triton is installed; this is its oracle.
    """
    if w.ndim != 2:
        raise ValueError(f"blockwise FP8 quantizes 2-D weights, got shape {tuple(w.shape)}")
    if block_size != 128:  # the kernel is built for the 128 x 128 blocks SGLang uses
        return quantize_blockwise_reference(w, block_size, pow2_scale)
    return quantize_blockwise_many([w], pow2_scale)[0]


def _fused_kernels(weights: list[torch.Tensor]):
    """`fp8_triton` when the weights can go through its fused kernels (all CUDA tensors, Triton installed), else None."""
    if not weights or not all(w.is_cuda for w in weights):
        return None
    from async_rl.weights import fp8_triton

    return fp8_triton if fp8_triton.available() else None


def quantize_blockwise_many(weights: list[torch.Tensor], pow2_scale: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`quantize_blockwise` of several weights: one fused launch on the GPU, one call each elsewhere."""
    kernels = _fused_kernels(weights)
    if kernels:
        return kernels.quantize_blockwise_many(weights, pow2_scale)
    return [quantize_blockwise_reference(w, pow2_scale=pow2_scale) for w in weights]


GRANULARITIES = ("block", "channel")


def quantize_channelwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale): q float8_e4m3fn of w's shape, scale float32 [out, 1]; each row's largest magnitude maps to 448.

    The oracle of the fused kernel `quantize_many` uses for CUDA tensors."""
    if w.ndim != 2:
        raise ValueError(f"channelwise FP8 quantizes 2-D weights, got shape {tuple(w.shape)}")
    w32 = w.to(torch.float32)
    amax = w32.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / torch.full_like(amax, FP8_E4M3_MAX), torch.ones_like(amax))
    return (w32 / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), scale


def quantize_many(weights: list[torch.Tensor], granularity: str, pow2_scale: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(q, scale) per weight in the layout of `granularity`."""
    if granularity == "block":
        return quantize_blockwise_many(weights, pow2_scale)
    if granularity == "channel":
        kernels = _fused_kernels(weights)
        return kernels.quantize_channelwise_many(weights) if kernels else [quantize_channelwise(w) for w in weights]
    raise ValueError(f"unknown FP8 granularity {granularity!r}; expected one of {GRANULARITIES}")


def dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: str, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    if granularity == "channel":
        return (q.to(torch.float32) * scale).to(dtype)
    return dequantize_blockwise(q, scale, dtype=dtype)


def quantization_config(granularity: str) -> dict:
    """The `quantization_config` SGLang reads from config.json for checkpoints in this layout."""
    if granularity == "channel":
        return {"quant_method": "w8a8_fp8"}
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def checkpoint_granularity(config: dict) -> str | None:
    """The FP8 layout of a checkpoint from its config.json contents; None for an unquantized one."""
    method = config.get("quantization_config", {}).get("quant_method")
    return {"fp8": "block", "w8a8_fp8": "channel"}.get(method)


def activation_group_size(granularity: str, channels: int) -> int:
    """Channels sharing one activation scale: 128 for block weights, a whole token for channel weights."""
    return 128 if granularity == "block" else channels


def quantize_activations(x: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """x rounded through E4M3 with one scale per token per `group_size` channels (dynamic 1x128 scheme)."""
    *lead, channels = x.shape
    groups = -(-channels // group_size)
    padded = torch.nn.functional.pad(x.to(torch.float32), (0, groups * group_size - channels)).view(*lead, groups, group_size)
    amax = padded.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / torch.full_like(amax, FP8_E4M3_MAX), torch.ones_like(amax))
    rounded = (padded / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32) * scale
    return rounded.view(*lead, groups * group_size)[..., :channels].to(x.dtype)


FP8_SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale")  # scale_name of a block / channel weight


def scale_name(weight_name: str, granularity: str = "block") -> str:
    """Where a quantized weight's scales live in a checkpoint: `<module>.weight_scale_inv` (block) or `.weight_scale`."""
    return weight_name + ("_scale_inv" if granularity == "block" else "_scale")


def quantize_blockwise_reference(w: torch.Tensor, block_size: int = 128, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch version of `quantize_blockwise` (any device)."""
    blocks, (rows, cols) = _blocked(w, block_size)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    # a tensor divisor: torch turns division by a Python scalar into a multiplication by its reciprocal,
    # which rounds differently from the IEEE division the kernel does
    scale_inv = torch.where(amax > 0, amax / torch.full_like(amax, FP8_E4M3_MAX), torch.ones_like(amax))
    if pow2_scale:
        scale_inv = round_up_to_power_of_two(scale_inv)
    q = (blocks / scale_inv).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    q = q.view(blocks.shape[0] * block_size, -1)[:rows, :cols].contiguous()
    return q, scale_inv[:, 0, :, 0].contiguous()


def dequantize_blockwise(
    q: torch.Tensor, scale_inv: torch.Tensor, block_size: int = 128, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """q * scale_inv, each scale broadcast over its block."""
    rows, cols = q.shape
    scales = scale_inv.repeat_interleave(block_size, 0)[:rows].repeat_interleave(block_size, 1)[:, :cols]
    return (q.to(torch.float32) * scales).to(dtype)


def is_fp8_quantizable(name: str, tensor: torch.Tensor) -> bool:
    """Linear weights of attention and MLP blocks; embeddings, norms, MoE routers and lm_head stay in high precision."""
    return (
        tensor.ndim == 2
        and name.endswith(".weight")
        and ".layers." in name
        and ("self_attn." in name or "mlp." in name)
        and not name.endswith("mlp.gate.weight")
    )
