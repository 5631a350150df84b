"""What an FP8 KV cache adds to the rollout/trainer mismatch: BF16 vs FP8 weights x BF16 vs FP8 KV cache.

    python benchmarks/bench_kv_mismatch.py --model-dir outputs/learning_run/model [--prompts 64 --n-samples 8]

A trained model is needed (a random one has near-uniform distributions, where every mismatch looks small):
the SFT model `benchmarks/gpu_learning_run.py` writes to OUTPUT_DIR/model, with its eval prompts in
data/eval.jsonl. Each cell runs one SGLang engine in its own process; FP8 weights are the checkpoint quantized by
tools/bf16_cast_fp8.py (blockwise, the quantizer a weight push uses). The engine samples responses at
temperature 1, then the trainer (torch backend, FP32, the checkpoint's weights) recomputes every response
token's log-prob. Per cell: mean |log p_trainer - log p_rollout| per token, its 99th percentile, and the share of
tokens whose importance ratio p_trainer / p_rollout leaves [0.5, 2] (what TIS truncates and MIS masks).
Needs a CUDA GPU and sglang.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from isolated import report, run_case

REPO = Path(__file__).resolve().parents[1]
CELLS = ["bf16/auto", "bf16/fp8_e4m3", "block/auto", "block/fp8_e4m3"]  # weights / SGLang --kv-cache-dtype


def run_cell(cell: str, args) -> dict:
    from async_rl.backends.sglang.engine import SGLangEngine
    from async_rl.backends.torch.trainer import TorchTrainer
    from async_rl.config.sections import TrainConfig
    from async_rl.rollout.engine import SamplingParams
    from async_rl.sample import Sample

    weights, kv_cache = cell.split("/")
    fp8 = None if weights == "bf16" else weights
    engine = SGLangEngine(args.fp8_model_dir if fp8 else str(args.model_dir), seed=0, fp8=fp8, dtype="bfloat16",
                          kv_cache_dtype=kv_cache, attention_backend=args.attention_backend, sampling_backend="pytorch",
                          mem_fraction_static=0.3, log_level="warning")  # context length: the model's own
    rows = [json.loads(line) for line in (args.model_dir / "data" / "eval.jsonl").read_text().splitlines()[: args.prompts]]
    samples = [Sample(prompt=r["prompt"], prompt_tokens=engine.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"],
                      group_id=i) for i, r in enumerate(rows) for _ in range(args.n_samples)]
    samples = engine.generate(samples, SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens))
    engine.shutdown()
    trainer = TorchTrainer(str(args.model_dir), TrainConfig(micro_batch_size=64), global_batch_size=len(samples),
                           temperature=1.0, device="cuda")
    recomputed = trainer.compute_log_probs(samples)
    diff = torch.tensor([a - b for s, lp in zip(samples, recomputed) for a, b in zip(lp, s.rollout_log_probs)])
    return {"cell": cell, "tokens": diff.numel(), "mean_abs": diff.abs().mean().item(),
            "p99_abs": diff.abs().quantile(0.99).item(), "outside_ratio_0.5_2": (diff.abs() > math.log(2)).float().mean().item()}


def fp8_checkpoint(model_dir: Path, out: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "tools" / "bf16_cast_fp8.py"), "--input-bf16-hf-path", str(model_dir),
                    "--output-fp8-hf-path", str(out), "--granularity", "block"], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="A trained Hugging Face checkpoint with data/eval.jsonl.")
    parser.add_argument("--cells", nargs="+", default=CELLS, choices=CELLS, help="weights/KV-cache dtype pairs")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=8, help="Responses per prompt.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--attention-backend", default="triton", help="SGLang's --attention-backend.")
    parser.add_argument("--fp8-model-dir", help=argparse.SUPPRESS)  # internal: the FP8 checkpoint the driver wrote
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this cell here and print JSON
    args = parser.parse_args()
    if args.one:
        report(run_cell(args.one, args))
        return
    if not (args.model_dir / "data" / "eval.jsonl").is_file():
        parser.error(f"--model-dir {args.model_dir}: no data/eval.jsonl (a model of benchmarks/gpu_learning_run.py has one)")
    print(f"model {args.model_dir}, {args.prompts} prompts x {args.n_samples} samples, up to {args.max_new_tokens} new "
          f"tokens, attention {args.attention_backend}, {torch.cuda.get_device_name()}")
    print("| weights | KV cache | tokens | mean abs log-prob diff | p99 | ratio outside [0.5, 2] | vs bf16/bf16 |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp8 = ["--fp8-model-dir", str(fp8_checkpoint(args.model_dir, Path(tmp) / "fp8"))] if any(
            c.startswith("block/") for c in args.cells) else []
        base, done = None, {}
        for cell in args.cells:  # one process per engine
            r = run_case(cell, [__file__, *sys.argv[1:], "--one", cell, *fp8])
            if r is None:
                continue
            done[cell] = r
            base = base or (r if cell == CELLS[0] else None)
            weights, kv_cache = cell.split("/")
            ratio = f"{r['mean_abs'] / base['mean_abs']:.2f}x" if base else "-"
            print(f"| {weights} | {'bf16' if kv_cache == 'auto' else kv_cache} | {r['tokens']:,} | {r['mean_abs']:.4f} | "
                  f"{r['p99_abs']:.3f} | {r['outside_ratio_0.5_2']:.2%} | {ratio} |", flush=True)
    if base and next(iter(done)) != CELLS[0]:  # rows printed before the base cell ran have no ratio above
        print("vs bf16/bf16: " + ", ".join(f"{c} {r['mean_abs'] / base['mean_abs']:.2f}x" for c, r in done.items()))


if __name__ == "__main__":
    main()
