"""The two GPU kernels of `token_log_probs`: one program per scored row, streaming over its vocabulary.

The forward kernel keeps an online max, partition function and spread (the running sums are rescaled when
the max grows), so a row of logits is read once, in its own dtype, and nothing of vocabulary size is
written. The backward kernel reads the row again and writes its gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _row_stats_kernel(logits, stride, rows, peak_out, sum_exp_out, spread_out, vocab, inv_t, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    base = logits + tl.load(rows + i).to(tl.int64) * stride
    peak = -1e30  # finite, so the first rescale is exp(-huge) = 0 rather than exp(-inf + inf)
    sum_exp = 0.0
    spread = 0.0
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < vocab
        x = tl.load(base + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
        new_peak = tl.maximum(peak, tl.max(x, 0))
        rescale = tl.exp(peak - new_peak)
        e = tl.exp(x - new_peak)
        spread = rescale * (spread + (peak - new_peak) * sum_exp) + tl.sum(tl.where(inside, e * (x - new_peak), 0.0), 0)
        sum_exp = rescale * sum_exp + tl.sum(e, 0)
        peak = new_peak
    tl.store(peak_out + i, peak)
    tl.store(sum_exp_out + i, sum_exp)
    tl.store(spread_out + i, spread)


@triton.jit
def _grad_kernel(grad, logits, stride, rows, targets, log_z, entropy, g_lp, g_h, vocab, inv_t, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    offset = tl.load(rows + i).to(tl.int64) * stride
    target = tl.load(targets + i)
    lz = tl.load(log_z + i)
    h = tl.load(entropy + i)
    glp = tl.load(g_lp + i)
    gh = tl.load(g_h + i)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < vocab
        log_p = tl.load(logits + offset + cols, mask=inside, other=0.0).to(tl.float32) * inv_t - lz
        p = tl.exp(log_p)
        g = -p * (glp + gh * (log_p + h)) + tl.where(cols == target, glp, 0.0)
        tl.store(grad + offset + cols, (g * inv_t).to(grad.dtype.element_ty), mask=inside)


def row_stats(logits: torch.Tensor, rows: torch.Tensor, inv_t: float) -> tuple[torch.Tensor, ...]:
    out = torch.empty(3, len(rows), dtype=torch.float32, device=logits.device)
    if len(rows):
        _row_stats_kernel[(len(rows),)](logits, logits.stride(0), rows.contiguous(), out[0], out[1], out[2],
                                        logits.shape[-1], inv_t, BLOCK=BLOCK, num_warps=8)
    return out[0], out[1], out[2]


def write_grad(grad, logits, rows, local_targets, log_z, entropy, g_lp, g_h, inv_t: float) -> None:
    if len(rows):
        _grad_kernel[(len(rows),)](grad, logits, logits.stride(0), rows.contiguous(), local_targets.contiguous(),
                                   log_z, entropy, g_lp, g_h, logits.shape[-1], inv_t, BLOCK=BLOCK, num_warps=8)
