"""Fused FP8 quantization on the GPU, blockwise and channelwise, bit-equal to the torch oracles in `fp8`.

Blockwise: each program loads one 128 x 128 block once, reduces its absolute maximum, and writes the E4M3
values and the block's float32 scale_inv. Channelwise: each program reads one output row twice (maximum,
then values) and writes its E4M3 values and float32 scale; the torch version makes about ten passes over a
float32 copy of the weight, which made a channel-FP8 weight push cost more than a BF16 one. Division is IEEE
round-to-nearest, as in the torch oracles, so the two agree bit for bit. Many tensors (a weight-sync bucket)
go in one launch: at tens of microseconds per launch from Python, per-tensor launches would cost more than
the quantization itself.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch reference is used
    triton = None

BLOCK = 128
# The launch table holds 7 int64 per tensor: w_ptr, q_ptr, s_ptr, rows, cols, col_blocks, first program.
ROW_CHUNK = 1024  # columns a channelwise program holds at once


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:
    _TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}

    @triton.jit
    def _table_entry(table_ptr, n_tensors, pid):
        """The launch-table row of the tensor program `pid` works on (binary search over first programs)."""
        lo = 0
        hi = n_tensors
        while hi - lo > 1:
            mid = (lo + hi) // 2
            first = tl.load(table_ptr + mid * 7 + 6)
            lo = tl.where(first <= pid, mid, lo)
            hi = tl.where(first <= pid, hi, mid)
        return table_ptr + lo * 7

    @triton.jit
    def _quantize_many_kernel(table_ptr, n_tensors, IN_DTYPE: tl.constexpr, POW2: tl.constexpr, ALIGNED: tl.constexpr,
                              BLOCK_SIZE: tl.constexpr):
        # one program per block of all tensors together
        pid = tl.program_id(0).to(tl.int64)
        entry = _table_entry(table_ptr, n_tensors, pid)
        block = pid - tl.load(entry + 6)
        rows = tl.load(entry + 3)
        cols = tl.load(entry + 4)
        col_blocks = tl.load(entry + 5)
        w_ptr = tl.load(entry).to(tl.pointer_type(IN_DTYPE))
        q_ptr = tl.load(entry + 1).to(tl.pointer_type(tl.float8e4nv))
        s_ptr = tl.load(entry + 2).to(tl.pointer_type(tl.float32))
        if ALIGNED:  # pointers and row lengths loaded from memory hide what enables 16-byte accesses
            cols = tl.multiple_of(cols, 16)
            w_ptr = tl.multiple_of(w_ptr, 16)
            q_ptr = tl.multiple_of(q_ptr, 16)
        row_block = block // col_blocks
        col_block = block % col_blocks
        r = row_block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        c = tl.max_contiguous(tl.multiple_of(col_block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE), BLOCK_SIZE), BLOCK_SIZE)
        mask = (r[:, None] < rows) & (c[None, :] < cols)
        offsets = r[:, None].to(tl.int64) * cols + c[None, :]
        w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.max(tl.abs(w), axis=1), axis=0)
        scale_inv = tl.where(amax > 0, tl.math.div_rn(amax, 448.0), 1.0)
        if POW2:
            bits = scale_inv.to(tl.int32, bitcast=True)
            exponent = bits & 0x7F800000
            bits = tl.where((bits & 0x007FFFFF) == 0, exponent, exponent + (1 << 23))
            scale_inv = bits.to(tl.float32, bitcast=True)
        q = tl.minimum(tl.maximum(tl.math.div_rn(w, scale_inv), -448.0), 448.0)
        tl.store(q_ptr + offsets, q.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + block, scale_inv)

    @triton.jit
    def _quantize_rows_kernel(table_ptr, n_tensors, IN_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, CHUNK: tl.constexpr):
        # one program per output row of all tensors together
        pid = tl.program_id(0).to(tl.int64)
        entry = _table_entry(table_ptr, n_tensors, pid)
        row = pid - tl.load(entry + 6)
        cols = tl.load(entry + 4)
        w_ptr = tl.load(entry).to(tl.pointer_type(IN_DTYPE))
        q_ptr = tl.load(entry + 1).to(tl.pointer_type(tl.float8e4nv))
        s_ptr = tl.load(entry + 2).to(tl.pointer_type(tl.float32))
        if ALIGNED:
            cols = tl.multiple_of(cols, 16)
            w_ptr = tl.multiple_of(w_ptr, 16)
            q_ptr = tl.multiple_of(q_ptr, 16)
        w_row = w_ptr + row * cols
        q_row = q_ptr + row * cols
        amax = tl.zeros((CHUNK,), dtype=tl.float32)
        for start in range(0, cols, CHUNK):
            c = start + tl.arange(0, CHUNK)
            amax = tl.maximum(amax, tl.abs(tl.load(w_row + c, mask=c < cols, other=0.0).to(tl.float32)))
        top = tl.max(amax, axis=0)
        scale = tl.where(top > 0, tl.math.div_rn(top, 448.0), 1.0)
        for start in range(0, cols, CHUNK):
            c = start + tl.arange(0, CHUNK)
            w = tl.load(w_row + c, mask=c < cols, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(tl.math.div_rn(w, scale), -448.0), 448.0)
            tl.store(q_row + c, q.to(tl.float8e4nv), mask=c < cols)
        tl.store(s_ptr + row, scale)


def _launch_per_dtype(weights: list[torch.Tensor], scale_shape, programs, launch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Allocate each weight's (q, scale) outputs and, per input dtype, call `launch(table, n_tensors, n_programs,
    in_dtype, aligned)` with the launch table on the device; `programs(rows, cols)` is a tensor's program count."""
    results: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(weights)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, w in enumerate(weights):
        by_dtype.setdefault(w.dtype, []).append(i)
    for dtype, indices in by_dtype.items():
        table, contiguous, total, aligned = [], [], 0, True
        for i in indices:
            w = weights[i].contiguous()
            rows, cols = w.shape
            q = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=w.device)
            scale = torch.empty(scale_shape(rows, cols), dtype=torch.float32, device=w.device)
            table += [w.data_ptr(), q.data_ptr(), scale.data_ptr(), rows, cols, triton.cdiv(cols, BLOCK), total]
            contiguous.append(w)  # alive until the launch below has been queued
            aligned &= cols % 16 == 0 and w.data_ptr() % 16 == 0 and q.data_ptr() % 16 == 0
            results[i] = (q, scale)
            total += programs(rows, cols)
        table_t = torch.tensor(table, dtype=torch.int64).pin_memory().to(weights[indices[0]].device, non_blocking=True)
        launch(table_t, len(indices), total, _TL_DTYPES[dtype], aligned)
    return results


def quantize_blockwise_many(weights: list[torch.Tensor], pow2_scale: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`quantize_blockwise` of every 2-D CUDA tensor in `weights`, in one launch per input dtype."""
    def launch(table, n, programs, in_dtype, aligned):
        _quantize_many_kernel[(programs,)](table, n, IN_DTYPE=in_dtype, POW2=pow2_scale, ALIGNED=aligned,
                                           BLOCK_SIZE=BLOCK, num_warps=16)

    return _launch_per_dtype(weights, lambda rows, cols: (triton.cdiv(rows, BLOCK), triton.cdiv(cols, BLOCK)),
                             lambda rows, cols: triton.cdiv(rows, BLOCK) * triton.cdiv(cols, BLOCK), launch)


def quantize_channelwise_many(weights: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`fp8.quantize_channelwise` of every 2-D CUDA tensor in `weights`, in one launch per input dtype."""
    def launch(table, n, programs, in_dtype, aligned):
        _quantize_rows_kernel[(programs,)](table, n, IN_DTYPE=in_dtype, ALIGNED=aligned, CHUNK=ROW_CHUNK, num_warps=4)

    return _launch_per_dtype(weights, lambda rows, cols: (rows, 1), lambda rows, cols: rows, launch)


def quantize_blockwise(w: torch.Tensor, pow2_scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `async_rl.weights.fp8.quantize_blockwise`, for a 2-D CUDA tensor."""
    return quantize_blockwise_many([w], pow2_scale)[0]
