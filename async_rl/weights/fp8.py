"""Blockwise FP8 (E4M3) weight quantization in the DeepSeek-V3 layout that SGLang loads.

Each 128 x 128 block of a linear weight W (out x in) is stored as float8_e4m3fn values q and one float32
`scale_inv` per block, with W ~= q * scale_inv. This plain-torch version runs anywhere and is the
reference for faster kernels.
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


def quantize_blockwise(w: torch.Tensor, block_size: int = 128, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale_inv): q float8_e4m3fn of w's shape, scale_inv float32 [ceil(out/128), ceil(in/128)].

    Each block's largest magnitude maps to 448. With `pow2_scale` the scale is rounded up to a power of
    two (E8M0-representable), so the block's maximum still fits. An all-zero block gets scale_inv 1.
    """
    if w.ndim != 2:
        raise ValueError(f"blockwise FP8 quantizes 2-D weights, got shape {tuple(w.shape)}")
    blocks, (rows, cols) = _blocked(w, block_size)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    scale_inv = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    if pow2_scale:
        scale_inv = torch.exp2(torch.ceil(torch.log2(scale_inv)))
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
    """Linear weights of attention and MLP blocks; embeddings, norms and lm_head stay in high precision."""
    return (
        tensor.ndim == 2
        and name.endswith(".weight")
        and ".layers." in name
        and ("self_attn." in name or "mlp." in name)
    )
