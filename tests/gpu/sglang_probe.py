"""Runs one real SGLang engine through `SGLangEngine` and prints a JSON report (used by test_sglang_engine.py).

The engine's server and the trainer that checks it share this script's process and GPU, not pytest's:
    python -m tests.gpu.sglang_probe --model DIR [--fp8-model DIR --fp8-granularity block|channel] --out report.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from async_rl.backends.sglang.engine import SGLangEngine
from async_rl.backends.sglang.fp8_layers import fp8_layer_difference
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from async_rl.rollout.engine import SamplingParams
from async_rl.sample import Sample
from async_rl.weights.fp8 import is_fp8_quantizable
from async_rl.weights.sync import weight_buckets
from tests.gpu.conftest import SGLANG_SERVER

SERVER = {**SGLANG_SERVER, "enable_memory_saver": True}
PROMPTS = ["12+34=", "70+18=", "99+99=", "5+61=", "40+40=", "13+87=", "7+7=", "58+29="]


def fresh(tokenizer, n_copies: int = 2) -> list[Sample]:
    return [Sample(prompt=p, prompt_tokens=tokenizer(p, add_special_tokens=False)["input_ids"], group_id=i)
            for i, p in enumerate(PROMPTS * n_copies)]


def mismatch(samples: list[Sample], trainer: TorchTrainer) -> float:
    recomputed = trainer.compute_log_probs(samples)
    diffs = [abs(a - b) for s, lp in zip(samples, recomputed) for a, b in zip(lp, s.rollout_log_probs)]
    return sum(diffs) / len(diffs)


def greedy_agreement(samples: list[Sample], trainer: TorchTrainer) -> float:
    """Share of the engine's greedy tokens that are also the trainer's argmax at that position."""
    agree = total = 0
    for s in samples:
        ids = torch.tensor([s.prompt_tokens + s.response_tokens], device=trainer.device)
        with torch.no_grad():
            logits = trainer.model(ids).logits[0, len(s.prompt_tokens) - 1 : -1]
        agree += int((logits.argmax(-1).cpu() == torch.tensor(s.response_tokens)).sum())
        total += s.response_length
    return agree / total


def perturbed_trainer(model: str, seed: int) -> TorchTrainer:
    trainer = TorchTrainer(model, TrainConfig(micro_batch_size=16), global_batch_size=16, temperature=1.0, device="cuda")
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in trainer.model.named_parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p))
    return trainer


def push(engine: SGLangEngine, trainer: TorchTrainer, fp8: str | None) -> None:
    for bucket in weight_buckets(trainer.export_weights(), bucket_bytes=1 << 20, fp8=fp8):
        engine.load_weights(bucket)


def probe(model: str, fp8: str | None, report: dict) -> None:
    key = f"fp8-{fp8}" if fp8 else "bf16"
    engine = SGLangEngine(model, seed=0, fp8=fp8, **SERVER)
    tokenizer = engine.tokenizer
    sampled = SamplingParams(temperature=1.0, max_new_tokens=24)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
    base = TorchTrainer(report["bf16_model"], TrainConfig(micro_batch_size=16), global_batch_size=16, temperature=1.0,
                        device="cuda")
    samples = engine.generate(fresh(tokenizer), sampled, request_id=1)
    report[f"{key}/tokens"] = sum(s.response_length for s in samples)
    report[f"{key}/logprob_mean_abs_diff_vs_trainer"] = mismatch(samples, base)

    new = perturbed_trainer(report["bf16_model"], seed=1)  # the "trained" weights
    before = engine.generate(fresh(tokenizer), greedy)
    report[f"{key}/greedy_agreement_new_weights_before_push"] = greedy_agreement(before, new)
    push(engine, new, fp8)
    engine.set_weight_version(1)  # an FP8 engine compares its FP8 layers with the push's here, and raises on a difference
    if fp8:
        served = engine.fp8_modules()
        pushed = [name for name, t in new.export_weights() if is_fp8_quantizable(name, t)]
        report[f"{key}/fp8_modules_served"] = len(served["fp8_modules"])
        report[f"{key}/fp8_layer_difference"] = fp8_layer_difference(pushed, served["fp8_modules"], served["fused"])
        report[f"{key}/fp8_layer_difference_one_weight_unpushed"] = fp8_layer_difference(
            [n for n in pushed if not n.endswith("layers.0.mlp.down_proj.weight")], served["fp8_modules"], served["fused"])
    after = engine.generate(fresh(tokenizer), greedy)
    report[f"{key}/greedy_agreement_new_weights_after_push"] = greedy_agreement(after, new)
    report[f"{key}/weight_version_after_push"] = after[0].weight_version
    pushed = engine.generate(fresh(tokenizer), sampled)
    report[f"{key}/logprob_mean_abs_diff_vs_trainer_after_push"] = mismatch(pushed, new)

    # colocated training: memory released for the train step, taken back, refilled by the next push
    free_before = torch.cuda.mem_get_info()[0]
    engine.pause()
    report[f"{key}/gib_freed_by_release"] = (torch.cuda.mem_get_info()[0] - free_before) / 2**30
    engine.resume()
    push(engine, new, fp8)
    resumed = engine.generate(fresh(tokenizer), greedy)
    report[f"{key}/greedy_agreement_after_release_resume_push"] = greedy_agreement(resumed, new)
    if fp8:
        try:
            engine.load_weights(next(iter(weight_buckets(new.export_weights(), bucket_bytes=1 << 20))))
            report[f"{key}/bf16_push_refused"] = False
        except ValueError as e:
            report[f"{key}/bf16_push_refused"] = str(e)[:200]
    engine.shutdown()
    if fp8:
        fresh_engine = SGLangEngine(fp8_checkpoint_of(new, fp8), seed=0, fp8=fp8, **SERVER)
        loaded = fresh_engine.generate(fresh(tokenizer), greedy)
        fresh_engine.shutdown()
        report[f"{key}/greedy_tokens_equal_fresh_engine_from_fp8_checkpoint"] = [
            s.response_tokens for s in resumed] == [s.response_tokens for s in loaded]
        report[f"{key}/greedy_first_difference"] = next(
            ([s.prompt, a.response_tokens, s.response_tokens] for a, s in zip(resumed, loaded)
             if a.response_tokens != s.response_tokens), None)


def fp8_checkpoint_of(trainer: TorchTrainer, fp8: str) -> str:
    """The trainer's weights as an FP8 checkpoint written by tools/bf16_cast_fp8.py (the quantizer pushes use)."""
    root = Path(tempfile.mkdtemp())
    trainer.model.save_pretrained(root / "hf", safe_serialization=True)
    trainer.tokenizer.save_pretrained(root / "hf")
    subprocess.run([sys.executable, "tools/bf16_cast_fp8.py", "--input-bf16-hf-path", str(root / "hf"),
                    "--output-fp8-hf-path", str(root / "fp8"), "--granularity", fp8], check=True)
    return str(root / "fp8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--fp8-model")
    parser.add_argument("--fp8-granularity", choices=["block", "channel"], default="block")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    report = {"bf16_model": args.model}
    probe(args.fp8_model or args.model, fp8=args.fp8_granularity if args.fp8_model else None, report=report)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2), flush=True)
