"""Training-step throughput on one GPU: the torch backend, the megatron backend's local layer spec and its
Transformer Engine spec in BF16 and FP8.

A random model of a real shape, a batch of random samples of fixed length, one optimizer step per call
(forward/backward of every micro-batch + Adam; with one optimizer step per batch the old log-probs come from
that forward, so there is no separate recompute pass), the same RL loss for all:

    python benchmarks/bench_train_step.py --model-config benchmarks/model_configs/qwen2.5-1.5b.json \
        --tokenizer-from outputs/tiny_model --backends local-bf16 te-bf16 te-fp8-tensorwise
    python benchmarks/bench_train_step.py --model-config benchmarks/model_configs/qwen2.5-7b.json --num-layers 4 ...

Each backend runs in its own process; the first step warms up, the median of the next `--steps` counts. After
them the trainer is offloaded as a colocated sync run does it (`--offload-train`: gradients and optimizer state,
then the weights) and brought back, twice: the GiB given back, the first offload (which also page-locks the host
buffers), and the second offload and onload (what every later step pays).
Tokens/s counts prompt + response tokens; ratios are against the first backend listed, in the same run.
MFU is model FLOPs over the GPU's dense BF16 peak (FP8 rows too): per token 6 FLOPs per weight of every
matrix multiply (forward + backward; the output layer included, the embedding lookup not), plus causal
attention, 6 x layers x attention width x sequence length / 2 per token (QK^T and AV, 4 FLOPs per position
pair and width, half the pairs, times the same 3 passes).
With `--profile`, one more step per backend runs under the torch profiler and its GPU kernel time is split into
matrix multiplies, attention, FP8 casts, the optimizer, and the rest (elementwise ops and reductions: norms, activations, the
log-prob kernels over the vocabulary, casts), against the step's wall time: where the gap to the GEMMs' speed goes.
Needs a CUDA GPU and megatron-core (Transformer Engine for the te-* rows).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from isolated import report, run_case

TE = dict(transformer_impl="transformer_engine", bf16=True)
BACKENDS = {  # name: megatron flags (None: the torch backend)
    "torch": None,
    "local-fp32": dict(transformer_impl="local"),
    "local-bf16": dict(transformer_impl="local", bf16=True),
    "te-bf16": TE,
    **{f"te-fp8-{recipe}": TE | dict(fp8_format="e4m3", fp8_recipe=recipe)
       for recipe in ("delayed", "tensorwise", "blockwise")},
}
KERNEL_KINDS = (  # first match wins, on the lower-cased kernel name
    ("attention", ("flash", "fmha", "attn", "sdpa")),
    ("matmul", ("gemm", "cutlass", "cublas", "nvjet", "xmma", "wgmma")),
    ("fp8 casts", ("cast_transpose", "quantize", "amax")),
    ("optimizer", ("adam", "multi_tensor")),
    ("copies", ("memcpy", "memset")),
)
TOP_OTHER_KERNELS = 8  # listed by name under --profile: the "other" column is a third of a 7B-slice step
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "H800": 989e12}  # SXM, FLOP/s


def model_flops_per_step(hf: dict, samples: int, seq_len: int) -> float:
    """FLOPs of one step as the module docstring counts them."""
    h, heads, layers = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    head_dim = hf.get("head_dim") or h // heads
    attention_width = heads * head_dim
    per_layer = h * (heads + 2 * hf.get("num_key_value_heads", heads)) * head_dim + attention_width * h \
        + 3 * h * hf["intermediate_size"]
    matmul_weights = layers * per_layer + hf["vocab_size"] * h
    tokens = samples * seq_len
    return 6 * matmul_weights * tokens + 6 * layers * attention_width * seq_len / 2 * tokens


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in lowered for m in marks)), "other")


def kernel_time_by_kind(step) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of GPU kernel time per kind over one call of `step`, and per kernel name for those of no kind."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    seconds: dict[str, float] = {}
    others: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            kind = kernel_kind(event.name)
            seconds[kind] = seconds.get(kind, 0.0) + event.device_time_total / 1e6
            if kind == "other":
                others[event.name] = others.get(event.name, 0.0) + event.device_time_total / 1e6
    return seconds, others


def bf16_peak() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for gpu, peak in DENSE_BF16_PEAK.items() if gpu in name), None)


def random_checkpoint(config_path: Path, tokenizer_from: Path, num_layers: int | None) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp())
    hf = json.loads(config_path.read_text())
    hf["num_hidden_layers"] = num_layers or hf["num_hidden_layers"]
    (out / "config.json").write_text(json.dumps(hf))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in tokenizer_from.glob("tokenizer*"):  # only the pad/eos ids are read
        shutil.copy(f, out / f.name)
    return out


def samples(n: int, prompt_len: int, response_len: int, vocab: int):
    from async_rl.sample import Sample

    rng = random.Random(0)
    return [Sample(prompt="", prompt_tokens=[rng.randrange(vocab) for _ in range(prompt_len)],
                   response_tokens=[rng.randrange(vocab) for _ in range(response_len)],
                   rollout_log_probs=[-1.0] * response_len, loss_mask=[1] * response_len) for _ in range(n)]


def run_one(backend: str, model_dir: Path, args) -> dict:
    from async_rl.config.sections import MegatronConfig, TrainConfig

    cfg = TrainConfig(lr=1e-6, micro_batch_size=args.micro_batch_size)
    tokens_per_micro_batch = args.micro_batch_size * (args.prompt_len + args.response_len)
    common = dict(global_batch_size=args.samples, temperature=1.0)
    if BACKENDS[backend] is None:
        from async_rl.backends.torch.trainer import TorchTrainer

        trainer = TorchTrainer(str(model_dir), cfg, device="cuda", **common)
    else:
        from async_rl.backends.megatron.trainer import MegatronTrainer

        mcfg = MegatronConfig(max_tokens_per_gpu=tokens_per_micro_batch, **BACKENDS[backend])
        trainer = MegatronTrainer(str(model_dir), cfg, mcfg, **common)
    hf = json.loads((model_dir / "config.json").read_text())
    batch = samples(args.samples, args.prompt_len, args.response_len, hf["vocab_size"])
    advantages = [1.0 if i % 2 else -1.0 for i in range(args.samples)]
    times = []
    for _ in range(args.steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batch, advantages)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    kernels = kernel_time_by_kind(lambda: trainer.train_step(batch, advantages)) if args.profile else None
    offloads = []
    for _ in range(2):  # the first offload also allocates the page-locked host buffers, later ones refill them
        optimizer_out, weights_out = trainer.offload(weights=False), trainer.offload(weights=True)
        back = trainer.onload()
        trainer.train_step(batch, advantages)  # the state came back whole enough to train on
        offloads.append(optimizer_out["perf/train_offload_time_s"] + weights_out["perf/train_offload_time_s"])
    seq_len = args.prompt_len + args.response_len
    peak = bf16_peak()
    return {"backend": backend, "step_s": step_s, "tok_s": args.samples * seq_len / step_s,
            "mfu": model_flops_per_step(hf, args.samples, seq_len) / step_s / peak if peak else None,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "offload_gib": optimizer_out["memory/train_offload_gib"] + weights_out["memory/train_offload_gib"],
            "first_offload_s": offloads[0], "offload_s": offloads[1],
            "onload_s": back["perf/train_onload_time_s"], "kernels": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, required=True)
    parser.add_argument("--tokenizer-from", type=Path, required=True, help="A checkpoint directory whose tokenizer to copy.")
    parser.add_argument("--backends", nargs="+", default=["torch", "local-bf16", "te-bf16", "te-fp8-tensorwise"],
                        choices=list(BACKENDS))
    parser.add_argument("--num-layers", type=int, help="Keep only this many layers of the shape (a slice of a big model).")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=768)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="Split one more step's GPU time by kernel kind.")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: BACKEND MODEL_DIR, print JSON
    args = parser.parse_args()
    if args.one:
        report(run_one(args.one[0], Path(args.one[1]), args))
        return
    model_dir = random_checkpoint(args.model_config, args.tokenizer_from, args.num_layers)
    layers = f", {args.num_layers} layers" if args.num_layers else ""
    print(f"model {args.model_config.stem}{layers}, {args.samples} samples x {args.prompt_len}+{args.response_len} "
          f"tokens, micro-batch {args.micro_batch_size}, {torch.cuda.get_device_name()}")
    print(f"| backend | step s | tokens/s | vs {args.backends[0]} | MFU | peak GiB | offloaded GiB | first offload s "
          "| offload s | onload s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    base, profiles = None, []
    for backend in args.backends:
        r = run_case(backend, [__file__, "--one", backend, str(model_dir), *sys.argv[1:]])
        if r is None:
            continue
        if r["kernels"] is not None:
            profiles.append((backend, r["step_s"], r["kernels"]))
        base = base or (r if backend == args.backends[0] else None)
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else "-"
        print(f"| {backend} | {r['step_s']:.3f} | {r['tok_s']:,.0f} | {ratio} | {mfu} | {r['peak_gib']:.1f} | "
              f"{r['offload_gib']:.1f} | {r['first_offload_s']:.2f} | {r['offload_s']:.2f} | {r['onload_s']:.2f} |",
              flush=True)
    if profiles:
        print_kernel_profiles(profiles)
    shutil.rmtree(model_dir)


def print_kernel_profiles(profiles: list[tuple[str, float, tuple[dict[str, float], dict[str, float]]]]) -> None:
    kinds = [kind for kind, _ in KERNEL_KINDS] + ["other"]
    print("\nGPU kernel time of one profiled step, ms (the median step's wall time beside it)")
    print("| backend | step | " + " | ".join(kinds) + " | all kernels | step minus kernels |")
    print("|---|---:|" + "---:|" * (len(kinds) + 2))
    for backend, step_s, (seconds, _) in profiles:
        busy = sum(seconds.values())
        cells = " | ".join(f"{seconds.get(kind, 0.0) * 1e3:.0f}" for kind in kinds)
        print(f"| {backend} | {step_s * 1e3:.0f} | {cells} | {busy * 1e3:.0f} | {max(0.0, step_s - busy) * 1e3:.0f} |")
    for backend, _, (_, others) in profiles:
        print(f"\nlargest kernels counted as other, {backend} (ms)")
        for name, t in sorted(others.items(), key=lambda item: -item[1])[:TOP_OTHER_KERNELS]:
            print(f"  {t * 1e3:7.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
