"""Tune SGLang's Triton blockwise-FP8 GEMM for a model's linear shapes on this GPU.

Without DeepGEMM, SGLang runs FP8 linears through a Triton kernel whose launch configuration comes
from a JSON file per (N, K, GPU); for shapes it has no file for (Qwen2.5-7B's, among many) it uses one
default configuration, and FP8 decoding ends up slower than BF16. This tool times candidate
configurations for every linear shape of a Hugging Face config and writes the files SGLang looks for:

    python tools/tune_sglang_fp8_gemm.py --hf-config CONFIG_DIR --output-dir fp8_gemm_configs/
    python tools/tune_sglang_fp8_gemm.py --install fp8_gemm_configs/    (copy into the sglang package)

Needs a CUDA GPU and sglang.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

BLOCK = 128
BATCH_SIZES = [1, 16, 32, 64, 128, 256, 1024, 4096]  # decode batches up to prefill chunks
CANDIDATES = [
    {"BLOCK_SIZE_M": m, "BLOCK_SIZE_N": n, "BLOCK_SIZE_K": BLOCK, "GROUP_SIZE_M": 16, "num_warps": w, "num_stages": s}
    for m, n, w, s in itertools.product([16, 32, 64, 128], [32, 64, 128], [4, 8], [3, 4, 5])
]


def linear_shapes(config: dict) -> list[tuple[int, int]]:
    """(N, K) of the fused projections SGLang builds for a Llama/Qwen-style decoder layer."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or hidden // heads
    return [((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim), (2 * inter, hidden), (hidden, inter)]


def config_file_name(n: int, k: int) -> str:
    device = torch.cuda.get_device_name().replace(" ", "_")
    return f"N={n},K={k},device_name={device},dtype=fp8_w8a8,block_shape=[{BLOCK}, {BLOCK}].json"


def tune_shape(n: int, k: int, batch_sizes: list[int]) -> dict[str, dict]:
    import triton
    from sglang.kernels.ops.quantization import fp8_kernel

    weight = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    weight_scale = torch.rand(triton.cdiv(n, BLOCK), triton.cdiv(k, BLOCK), device="cuda")
    best: dict[str, dict] = {}
    for m in tqdm(batch_sizes, desc=f"N={n} K={k}", leave=False):
        x = torch.randn(m, k, device="cuda").to(torch.float8_e4m3fn)
        x_scale = torch.rand(m, triton.cdiv(k, BLOCK), device="cuda")
        timings = []
        for candidate in CANDIDATES:
            fp8_kernel.get_w8a8_block_fp8_configs = lambda *_a, c=candidate, m=m: {m: c}
            run = lambda x=x, x_scale=x_scale: fp8_kernel.w8a8_block_fp8_matmul_triton(  # noqa: E731
                x, weight, x_scale, weight_scale, [BLOCK, BLOCK], torch.bfloat16)
            try:
                timings.append((triton.testing.do_bench(run, warmup=5, rep=20), candidate))
            except Exception:  # a configuration that does not fit this GPU's shared memory
                continue
        best[str(m)] = min(timings, key=lambda t: t[0])[1]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-config", nargs="+", help="Directories (or config.json files) of the models to tune for.")
    parser.add_argument("--output-dir", type=Path, help="Where to write the JSON files.")
    parser.add_argument("--install", type=Path, help="Copy tuned JSON files from this directory into the sglang package.")
    args = parser.parse_args()
    if args.install:
        from sglang.kernels.ops.quantization import fp8_kernel

        target = Path(fp8_kernel.__file__).parent / "configs"
        for path in sorted(args.install.glob("N=*.json")):
            shutil.copy(path, target / path.name)
            print(f"installed {path.name}")
        return
    if not (args.hf_config and args.output_dir):
        parser.error("--hf-config and --output-dir are required (or --install DIR)")
    shapes = []
    for config_path in map(Path, args.hf_config):
        config = json.loads((config_path / "config.json" if config_path.is_dir() else config_path).read_text())
        shapes += [s for s in linear_shapes(config) if s not in shapes]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for n, k in shapes:
        best = tune_shape(n, k, BATCH_SIZES)
        (args.output_dir / config_file_name(n, k)).write_text(json.dumps(best, indent=2))
        print(f"N={n} K={k}: " + ", ".join(f"M={m}: {c['BLOCK_SIZE_M']}x{c['BLOCK_SIZE_N']} w{c['num_warps']} s{c['num_stages']}"
                                          for m, c in best.items()), flush=True)


if __name__ == "__main__":
    main()
