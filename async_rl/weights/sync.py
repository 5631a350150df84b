"""Weight sync payloads: the trainer's tensors in buckets, quantized to FP8 when the rollout runs FP8.

An FP8 bucket carries each linear weight as the pair the engine's checkpoint format holds (float8
`<name>` and its float32 scales, `<name>_scale_inv` per block or `<name>_scale` per channel), so the engine
copies bytes and never re-quantizes.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from async_rl.weights.fp8 import is_fp8_quantizable, quantize_many, scale_name

NamedTensors = list[tuple[str, torch.Tensor]]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _sent_nbytes(name: str, tensor: torch.Tensor, fp8: str | None) -> int:
    """Bytes `tensor` takes on the wire: one per element once quantized (its scales are a rounding error)."""
    return tensor.numel() if fp8 and is_fp8_quantizable(name, tensor) else _nbytes(tensor)


def weight_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], *, bucket_bytes: int, fp8: str | None = None,
                   pow2_scale: bool = False) -> Iterator[NamedTensors]:
    """Yield buckets that send at most `bucket_bytes` each (a larger tensor travels alone).

    `fp8`: None sends the tensors as they are; "block" or "channel" quantizes linear weights in that layout.
    Sizes count the bytes sent, so an FP8 push makes half the loads of a BF16 one: every load has a fixed
    cost in the engine, and counting source bytes made FP8 pay it as often for half the payload. While it is
    quantized, an FP8 bucket's source tensors come to about twice `bucket_bytes`.
    """
    bucket: NamedTensors = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = _sent_nbytes(name, tensor, fp8)
        if bucket and size + nbytes > bucket_bytes:
            yield _finish(bucket, fp8, pow2_scale)
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield _finish(bucket, fp8, pow2_scale)


def _finish(bucket: NamedTensors, fp8: str | None, pow2_scale: bool) -> NamedTensors:
    if fp8 is None:
        return bucket
    linear = [(n, t) for n, t in bucket if is_fp8_quantizable(n, t)]
    quantized = dict(zip((n for n, _ in linear), quantize_many([t for _, t in linear], fp8, pow2_scale)))
    out: NamedTensors = []
    for name, tensor in bucket:
        if name in quantized:
            q, scale = quantized[name]
            out += [(name, q), (scale_name(name, fp8), scale)]
        else:
            out.append((name, tensor))
    return out
