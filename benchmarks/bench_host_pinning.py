"""Page-locking the host buffers of `--offload-train`'s first offload, three ways.

`HostStash` page-locks one host buffer per offloaded tensor on the first offload and refills it in place after
that; on a 4-layer slice of the 7B shape that first offload took 21 s (H100), nearly all of it locking about
30 GB, while later offloads take 0.5 s. The buffers come from torch's caching host allocator, which also rounds
every block up to a power of two. The cases, each in its own process (the allocator reads its settings once):

    alloc        torch.empty(pin_memory=True): cudaHostAlloc of a power-of-two block per tensor
    register-K   the same allocator with pinned_use_cuda_host_register and K threads faulting the pages in
    manual       a pageable tensor of the exact size, its pages faulted in by torch's multi-threaded fill,
                 then cudaHostRegister

    python benchmarks/bench_host_pinning.py --model-config benchmarks/model_configs/qwen2.5-7b.json --num-layers 4

The tensors are those the offload moves for each layer's matrix-multiply weights: the FP32 main weight, two FP32
Adam moments and the BF16 weight. Reported: seconds to get every buffer, GB/s of one device-to-host copy into each
(a buffer that is not page-locked copies at a fraction of that speed), and the host bytes held. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_rollout import hf_parameters
from isolated import report, run_case

REGISTER = "pinned_use_cuda_host_register:True,pinned_num_register_threads:{}"


def layer_shapes(hf: dict, num_layers: int) -> list[tuple[int, int]]:
    """The matrix-multiply weights of `num_layers` decoder layers: q, k, v, o, gate, up, down."""
    return [shape for name, shape in hf_parameters({**hf, "num_hidden_layers": num_layers})
            if ".layers." in name and len(shape) == 2]


def manual_pinned(numel: int, dtype: torch.dtype) -> torch.Tensor:
    buffer = torch.empty(numel, dtype=dtype)
    buffer.zero_()  # faults the pages in on every intra-op thread, so the registration below only locks them
    code = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), numel * buffer.element_size(), 0)
    if int(code) != 0:
        raise RuntimeError(f"cudaHostRegister failed with CUDA error {int(code)}")
    return buffer


def run_one(case: str, shapes: list[tuple[int, int]]) -> dict:
    torch.zeros(1, device="cuda")  # CUDA context first, as in a trainer
    sizes = [(rows * cols, dtype) for rows, cols in shapes for dtype in (torch.float32,) * 3 + (torch.bfloat16,)]
    start = time.perf_counter()
    if case == "manual":
        buffers = [manual_pinned(numel, dtype) for numel, dtype in sizes]
    else:
        buffers = [torch.empty(numel, dtype=dtype, pin_memory=True) for numel, dtype in sizes]
    alloc_s = time.perf_counter() - start
    nbytes = [b.numel() * b.element_size() for b in buffers]
    source = torch.empty(max(nbytes), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    for buffer, size in zip(buffers, nbytes):
        buffer.view(torch.uint8).copy_(source[:size], non_blocking=True)
    torch.cuda.synchronize()
    copy_s = time.perf_counter() - start
    total = sum(nbytes)
    held = total if case == "manual" else torch.cuda.host_memory_stats()["allocated_bytes.current"]
    return {"gib": total / 2**30, "alloc_s": alloc_s, "copy_gbps": total / copy_s / 1e9, "held_gib": held / 2**30,
            "pinned": all(b.is_pinned() for b in buffers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, required=True)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 16], help="register-K cases to run.")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this case here and print JSON
    args = parser.parse_args()
    shapes = layer_shapes(json.loads(args.model_config.read_text()), args.num_layers)
    if args.one:
        report(run_one(args.one, shapes))
        return
    cases = {"alloc": {}, **{f"register-{k}": {"PYTORCH_CUDA_ALLOC_CONF": REGISTER.format(k)} for k in args.threads},
             "manual": {}}
    argv = [__file__, "--model-config", str(args.model_config), "--num-layers", str(args.num_layers)]
    results = {case: run_case(case, [*argv, "--one", case], env=env) for case, env in cases.items()}
    base = results["alloc"]
    print(f"{args.model_config.stem}, {args.num_layers} layers, {torch.cuda.get_device_name()}")
    print("| case | GiB | seconds to pin | vs alloc | copy GB/s | host GiB held | all pinned |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for case, r in results.items():
        if r is None:
            print(f"| {case} | failed | | | | | |")
            continue
        ratio = f"{base['alloc_s'] / r['alloc_s']:.2f}x" if base else "-"
        print(f"| {case} | {r['gib']:.1f} | {r['alloc_s']:.2f} | {ratio} | {r['copy_gbps']:.1f} | "
              f"{r['held_gib']:.1f} | {r['pinned']} |")


if __name__ == "__main__":
    main()
