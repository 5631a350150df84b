"""Training-step throughput on one GPU: the megatron backend (BF16 and FP32) against the torch backend (FP32).

A random model of a real shape, a batch of random samples of fixed length, one optimizer step per call
(old log-prob recompute + forward/backward of every micro-batch + AdamW), the same RL loss for all:

    python benchmarks/bench_train_step.py --model-config benchmarks/model_configs/qwen2.5-0.5b.json \
        --tokenizer-from outputs/tiny_model

Each backend runs in its own process; the first step warms up, the median of the next `--steps` counts.
Tokens/s counts prompt + response tokens; ratios are against the torch backend of the same run.
Needs a CUDA GPU and megatron-core.
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

BACKENDS = ("torch", "megatron-fp32", "megatron-bf16")


def random_checkpoint(config_path: Path, tokenizer_from: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp())
    shutil.copy(config_path, out / "config.json")
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
    if backend == "torch":
        from async_rl.trainer.torch_trainer import TorchTrainer

        trainer = TorchTrainer(str(model_dir), cfg, device="cuda", **common)
    else:
        from async_rl.trainer.megatron.trainer import MegatronTrainer

        mcfg = MegatronConfig(bf16=backend == "megatron-bf16", max_tokens_per_gpu=tokens_per_micro_batch)
        trainer = MegatronTrainer(str(model_dir), cfg, mcfg, **common)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    batch = samples(args.samples, args.prompt_len, args.response_len, vocab)
    advantages = [1.0 if i % 2 else -1.0 for i in range(args.samples)]
    times = []
    for _ in range(args.steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(batch, advantages)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times[1:])
    tokens = args.samples * (args.prompt_len + args.response_len)
    return {"backend": backend, "step_s": step_s, "tok_s": tokens / step_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-config", type=Path, required=True)
    parser.add_argument("--tokenizer-from", type=Path, required=True, help="A checkpoint directory whose tokenizer to copy.")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--response-len", type=int, default=768)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: BACKEND MODEL_DIR, print JSON
    args = parser.parse_args()
    if args.one:
        report(run_one(args.one[0], Path(args.one[1]), args))
        return
    model_dir = random_checkpoint(args.model_config, args.tokenizer_from)
    print(f"model {args.model_config.stem}, {args.samples} samples x {args.prompt_len}+{args.response_len} tokens, "
          f"micro-batch {args.micro_batch_size}, {torch.cuda.get_device_name()}")
    print("| backend | step s | tokens/s | vs torch | peak GiB |")
    print("|---|---:|---:|---:|---:|", flush=True)
    base = None
    for backend in args.backends:
        r = run_case(backend, [__file__, "--one", backend, str(model_dir), *sys.argv[1:]])
        if r is None:
            continue
        base = base or (r if backend == "torch" else None)
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        print(f"| {backend} | {r['step_s']:.2f} | {r['tok_s']:,.0f} | {ratio} | {r['peak_gib']:.1f} |", flush=True)
    shutil.rmtree(model_dir)


if __name__ == "__main__":
    main()
