"""Blockwise FP8 quantization of every linear weight of a 7B- and a 32B-shaped model, on one GPU.

Compares the fused Triton kernel (one launch per 512 MB bucket, as the weight sync calls it), the plain
torch version (eager and torch.compile, one call per tensor) and the copy floor: the bytes the
quantizer must move (read BF16, write FP8 + scales) at the device-to-device copy bandwidth measured in
the same run. Also checks that Triton equals the torch oracle bit for bit.

    python benchmarks/bench_fp8_quant.py
"""

from __future__ import annotations

import statistics

import torch

from async_rl.weights import fp8_triton
from async_rl.weights.fp8 import quantize_blockwise_reference

# Qwen2.5-7B and Qwen2.5-32B shapes: (hidden, intermediate, layers, q_out, kv_out)
MODELS = {"7B": (3584, 18944, 28, 3584, 512), "32B": (5120, 27648, 64, 5120, 1024)}


def layer_shapes(hidden, inter, q_out, kv_out):
    return [(q_out, hidden), (kv_out, hidden), (kv_out, hidden), (hidden, q_out), (inter, hidden), (inter, hidden), (hidden, inter)]


BUCKET_BYTES = 512 * 1024**2


def to_buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    buckets, current, size = [], [], 0
    for t in tensors:
        if current and size + t.numel() * t.element_size() > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(t)
        size += t.numel() * t.element_size()
    return buckets + [current] if current else buckets


def time_ms(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (time_ms(lambda: dst.copy_(src)) / 1e3)


def repeat_per_tensor(fn, weights: list[torch.Tensor], layers: int):
    def all_layers():
        for _ in range(layers):
            for w in weights:
                fn(w)
    return all_layers


def in_buckets(buckets: list[list[torch.Tensor]]):
    def all_buckets():
        for bucket in buckets:
            fp8_triton.quantize_blockwise_many(bucket)
    return all_buckets


def measure(name: str, dims: tuple, bandwidth: float, compiled) -> list[tuple]:
    hidden, inter, layers, q_out, kv_out = dims
    shapes = layer_shapes(hidden, inter, q_out, kv_out)
    # one layer's weights, quantized `layers` times: every matrix is far larger than L2, so this costs
    # what quantizing `layers` distinct layers costs, without holding the whole model
    weights = [torch.randn(s, dtype=torch.bfloat16, device="cuda") * 0.02 for s in shapes]
    for w, (q_t, s_t) in zip(weights, fp8_triton.quantize_blockwise_many(weights)):  # correctness first
        q_r, s_r = quantize_blockwise_reference(w)
        assert torch.equal(q_t.view(torch.uint8), q_r.view(torch.uint8)) and torch.equal(s_t, s_r), name
    elements = layers * sum(r * c for r, c in shapes)
    moved = elements * (2 + 1) + layers * sum(-(-r // 128) * -(-c // 128) * 4 for r, c in shapes)
    floor_ms = moved / bandwidth * 1e3
    results = {
        "triton": time_ms(in_buckets(to_buckets(weights * layers, BUCKET_BYTES)), repeats=3),
        "torch.compile": time_ms(repeat_per_tensor(compiled, weights, layers), repeats=3),
        "torch eager": time_ms(repeat_per_tensor(quantize_blockwise_reference, weights, layers), repeats=3),
    }
    return [(name, elements / 1e9, method, ms, floor_ms, floor_ms / ms) for method, ms in results.items()]


def main() -> None:
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    compiled = torch.compile(quantize_blockwise_reference, dynamic=False)
    rows = []
    for name, dims in MODELS.items():
        rows += measure(name, dims, bandwidth, compiled)
        torch.cuda.empty_cache()
    print(f"device: {torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
          "Triton output equals the torch oracle bit for bit on every shape")
    print("| model | linear weights (G) | method | time (ms) | copy floor (ms) | % of copy bandwidth |")
    print("|---|---:|---|---:|---:|---:|")
    for name, g, method, ms, floor_ms, frac in rows:
        print(f"| {name} | {g:.2f} | {method} | {ms:.1f} | {floor_ms:.1f} | {100 * frac:.0f}% |")


if __name__ == "__main__":
    main()
