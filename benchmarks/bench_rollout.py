"""Rollout speed of SGLang engines with BF16 vs FP8 weights, engine start-up, and a full weight update, profiled.

Random ("dummy") weights of a real model shape; each engine runs in its own process:

    python benchmarks/bench_rollout.py --model-config benchmarks/model_configs/qwen2.5-7b.json \
        --modes bf16 fp8 fp8 fp8-channel fp8+kv-fp8 fp8+no-deepgemm bf16+flashinfer

Start-up: the engine's construction (server up, weights allocated) and its first generation (where kernels
compiled on first use, such as DeepGEMM's, are built); a mode listed twice shows a second start reusing
the kernel caches the first one wrote. Decode: a batch of `--batch` prompts of `--prompt-len` random
tokens, `--new-tokens` sampled tokens each (EOS ignored), sent at once through the engine's HTTP client to
its SGLang server, CUDA graphs on. Weight update: every parameter pushed through `SGLangEngine.load_weights`
in buckets sending 512 MB each from CUDA tensors (FP8: quantized per bucket by async_rl.weights.fp8 first,
as the trainer does), in stages: quantization and bucketing on the trainer's side, then the loads (CUDA IPC
handles, the HTTP request, SGLang's loader, the cache flush). The first update (where Triton compiles the
quantizer) is reported apart from the profiled second one. `fp8` and `fp8-tuned` serve blockwise FP8
(`fp8-tuned` installs the JSON files of tools/tune_sglang_fp8_gemm.py into SGLang before starting);
`fp8-channel` serves channelwise FP8 (CUTLASS scaled-mm). Options follow a mode after `+`, so that one run
compares them: `+kv-fp8` keeps the KV cache in FP8 (`fp8_e4m3`) whatever `--kv-cache-dtype` says, and
`+no-deepgemm` turns DeepGEMM off (`SGLANG_ENABLE_JIT_DEEPGEMM=0`; block weights then run SGLang's Triton FP8
GEMM); `+triton`, `+flashinfer` or `+fa3` picks the mode's attention backend over `--attention-backend`.
Ratios are against the run's first mode with BF16 weights and a BF16 KV cache (`bf16`, `bf16+flashinfer`, ...).
Needs a CUDA GPU and sglang.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from isolated import report, run_case

from async_rl.weights.fp8 import quantization_config

REPO = Path(__file__).resolve().parents[1]
GRANULARITY = {"bf16": None, "fp8": "block", "fp8-tuned": "block", "fp8-channel": "channel"}
ATTENTION = ("triton", "flashinfer", "fa3")  # SGLang attention backends a mode can name after `+`
OPTIONS = ("kv-fp8", "no-deepgemm", *ATTENTION)


def parse_mode(text: str) -> str:
    """A `--modes` entry: weights, then options after `+` (`fp8+kv-fp8+no-deepgemm`)."""
    weights, *options = text.split("+")
    if weights not in GRANULARITY or not set(options) <= set(OPTIONS) or len(set(options) & set(ATTENTION)) > 1:
        raise argparse.ArgumentTypeError(f"{text!r}: weights are one of {', '.join(GRANULARITY)}, options "
                                         f"{', '.join('+' + o for o in OPTIONS)} (at most one attention backend)")
    return text


def attention_backend(mode: str, default: str) -> str:
    """The attention backend a mode names after `+`, else `--attention-backend`."""
    return next((o for o in mode.split("+")[1:] if o in ATTENTION), default)


def hf_parameters(config: dict):
    """(name, shape) of every parameter of a Qwen2-style checkpoint, in checkpoint order."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = h // heads
    yield "model.embed_tokens.weight", (config["vocab_size"], h)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        for proj, rows in (("q_proj", heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
            yield p + f"self_attn.{proj}.weight", (rows, h)
            yield p + f"self_attn.{proj}.bias", (rows,)
        yield p + "self_attn.o_proj.weight", (h, heads * hd)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (inter, h)
        yield p + "mlp.up_proj.weight", (inter, h)
        yield p + "mlp.down_proj.weight", (h, inter)
    yield "model.norm.weight", (h,)
    if not config.get("tie_word_embeddings"):
        yield "lm_head.weight", (config["vocab_size"], h)


def run_one(mode: str, config_path: Path, args) -> dict:
    from async_rl.backends.sglang.engine import SGLangEngine

    config = json.loads(config_path.read_text())
    model_dir = Path(tempfile.mkdtemp())
    shutil.copy(config_path, model_dir / "config.json")
    weights, *options = mode.split("+")
    fp8 = GRANULARITY[weights]
    if "no-deepgemm" in options:  # read by the engine when it starts its server
        os.environ["SGLANG_ENABLE_JIT_DEEPGEMM"] = "0"
    if weights == "fp8-tuned":
        subprocess.run([sys.executable, str(REPO / "tools" / "tune_sglang_fp8_gemm.py"), "--install", args.tuned_configs],
                       check=True)
    server = dict(load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                  attention_backend=attention_backend(mode, args.attention_backend), sampling_backend="pytorch",
                  mem_fraction_static=0.6, context_length=args.prompt_len + args.new_tokens + 64,
                  cuda_graph_max_bs_decode=args.batch, max_running_requests=args.batch, log_level="warning",
                  kv_cache_dtype="fp8_e4m3" if "kv-fp8" in options else args.kv_cache_dtype)
    if fp8:
        server["json_model_override_args"] = json.dumps({"quantization_config": quantization_config(fp8)})
    start = time.perf_counter()
    engine = SGLangEngine(str(model_dir), fp8=fp8, max_concurrent_requests=args.batch, **server)
    start_s = time.perf_counter() - start
    prompts = torch.randint(100, config["vocab_size"] - 100, (args.batch, args.prompt_len)).tolist()
    params = {"temperature": 1.0, "max_new_tokens": args.new_tokens, "ignore_eos": True}

    def generate(max_new_tokens: int) -> list[dict]:  # the engine's own HTTP client, one request per prompt
        requests = [{"input_ids": p, "sampling_params": {**params, "max_new_tokens": max_new_tokens}} for p in prompts]
        return engine.client.post_many("/generate", requests)

    start = time.perf_counter()
    generate(16)  # warm-up: kernels compiled on first use
    first_generate_s = time.perf_counter() - start
    start = time.perf_counter()
    outputs = generate(args.new_tokens)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o["output_ids"]) for o in outputs)

    source = [(name, torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02) for name, shape in hf_parameters(config)]
    first_update_s = sum(update(engine, source, fp8)[:2])
    quantize_s, load_s, buckets = update(engine, source, fp8)
    engine.shutdown()
    return {"mode": mode, "output_tok_s": tokens / elapsed, "decode_s": elapsed, "tokens": tokens, "start_s": start_s,
            "first_generate_s": first_generate_s, "first_update_s": first_update_s, "update_s": quantize_s + load_s,
            "quantize_s": quantize_s, "load_s": load_s, "buckets": buckets}


def update(engine, source: list[tuple[str, torch.Tensor]], fp8: str | None) -> tuple[float, float, int]:
    """One full weight update, timed by stage: the trainer's quantization and bucketing, then the engine's loads.
    Returns (quantize s, load s, buckets)."""
    from async_rl.weights.sync import weight_buckets

    torch.cuda.synchronize()
    start = time.perf_counter()
    buckets = list(weight_buckets(source, bucket_bytes=512 * 1024**2, fp8=fp8))
    torch.cuda.synchronize()
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    for bucket in buckets:
        engine.load_weights(bucket)
    torch.cuda.synchronize()
    return quantize_s, time.perf_counter() - start, len(buckets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", default=["bf16", "fp8"], type=parse_mode,
                        help=f"weights ({', '.join(GRANULARITY)}), each optionally followed by {' '.join(f'+{o}' for o in OPTIONS)}")
    parser.add_argument("--tuned-configs", help="Directory written by tools/tune_sglang_fp8_gemm.py (fp8-tuned).")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--attention-backend", default="triton", help="SGLang's --attention-backend.")
    parser.add_argument("--kv-cache-dtype", default="auto", help="SGLang's --kv-cache-dtype (fp8_e4m3: an FP8 KV cache).")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this mode here and print JSON
    args = parser.parse_args()
    if args.one:
        report(run_one(args.one, args.model_config, args))
        return
    print(f"model {args.model_config.stem}, batch {args.batch}, prompt {args.prompt_len}, new tokens {args.new_tokens}, "
          f"attention {args.attention_backend}, KV cache {args.kv_cache_dtype}, {torch.cuda.get_device_name()}")
    print("| weights | start s | first generate s | output tok/s | vs bf16 | first update s | update s | quantize s | "
          "load s | buckets | update vs bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    base = None
    for mode in args.modes:  # one process per engine: SGLang's kernels and memory are per process
        r = run_case(mode, [__file__, "--one", mode, *sys.argv[1:]])
        if r is None:
            continue
        base = base or (r if mode.split("+")[0] == "bf16" and "kv-fp8" not in mode else None)
        tok_ratio = f"{r['output_tok_s'] / base['output_tok_s']:.2f}x" if base else "-"
        upd_ratio = f"{r['update_s'] / base['update_s']:.2f}x" if base else "-"
        print(f"| {mode} | {r['start_s']:.1f} | {r['first_generate_s']:.1f} | {r['output_tok_s']:,.0f} | {tok_ratio} | "
              f"{r['first_update_s']:.2f} | {r['update_s']:.3f} | {r['quantize_s']:.3f} | {r['load_s']:.3f} | {r['buckets']} | "
              f"{upd_ratio} |",
              flush=True)


if __name__ == "__main__":
    main()
