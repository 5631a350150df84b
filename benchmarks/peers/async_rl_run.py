"""The learning workload on async_rl: SGLang engine and Megatron trainer colocated on one GPU, BF16, sync."""

from __future__ import annotations

import sys
from pathlib import Path

from launch import launch
from workload import Result, StepTimes, Workload, mean_after_warmup, start_up_s

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from plot_run import read_metrics  # noqa: E402

MEMORY_KEYS = ("perf/release_memory_time_s", "perf/resume_memory_time_s", "perf/train_onload_time_s",
               "perf/train_offload_time_s", "perf/train_offload_weights_time_s")


def flags(w: Workload, model: Path, out: Path, seed: int) -> list[str]:
    return [
        "--hf-checkpoint", str(model), "--prompt-data", str(model / "data" / "train.jsonl"),
        "--eval-prompt-data", "arithmetic", str(model / "data" / "eval.jsonl"), "--output-dir", str(out),
        "--num-rollout", str(w.num_rollout), "--rollout-batch-size", str(w.rollout_batch_size),
        "--n-samples-per-prompt", str(w.n_samples_per_prompt), "--rollout-max-response-len", str(w.max_response_len),
        "--rollout-temperature", str(w.temperature), "--rm-type", "deepscaler", "--eval-interval", str(w.eval_interval),
        "--n-samples-per-eval-prompt", str(w.n_samples_per_eval_prompt), "--eval-temperature", str(w.temperature),
        "--eval-max-response-len", str(w.max_response_len), "--lr", str(w.lr), "--eps-clip", str(w.eps_clip),
        "--eps-clip-high", str(w.eps_clip_high), "--micro-batch-size", "64", "--seed", str(seed),
        "--rollout-backend", "sglang", "--train-backend", "megatron", "--bf16", "--actor-num-gpus-per-node", "1",
        "--colocate", "--sglang-mem-fraction-static", str(w.gpu_memory_fraction), "--sglang-context-length", "256",
    ]


def run(w: Workload, model: Path, out: Path, seed: int, extra: list[str], budget_s: float | None = None) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "async_rl.train", *flags(w, model, out / "run", seed), *extra]
    done = launch("async_rl", cmd, out / "async_rl.log", REPO, budget_s)
    metrics = out / "run" / "metrics.jsonl"
    rows = read_metrics(metrics) if metrics.exists() else []
    step_times = [r["perf/step_time_s"] for r in rows if "perf/step_time_s" in r]
    if len(step_times) < 2:
        raise RuntimeError(f"async_rl finished {len(step_times)} steps in {done.wall_s:.0f} s")
    first = 0  # step 0 compiles kernels and makes the first push
    times = StepTimes(
        step=mean_after_warmup(rows, "perf/step_time_s", first),
        generation=mean_after_warmup(rows, "perf/rollout_time_s", first),
        training=mean_after_warmup(rows, "perf/train_time_s", first),
        weight_update=mean_after_warmup(rows, "perf/update_weights_time_s", first),
        memory_moves=sum(mean_after_warmup(rows, k, first) or 0.0 for k in MEMORY_KEYS),
    )
    response_len = mean_after_warmup(rows, "rollout/response_len_mean", first) or 0.0
    train_tok_s = mean_after_warmup(rows, "perf/train_tokens_per_s", first)
    return Result(
        "async_rl", times, w.samples_per_step, response_len * w.samples_per_step,
        (train_tok_s or 0.0) * (times.training or 0.0), done.peak_gpu_memory_gib,
        [(r["step"], r["eval/reward_mean"]) for r in rows if "eval/reward_mean" in r],
        note="no separate log-prob pass: with one optimizer step per batch the step's own forward gives the old log-probs",
        steps_done=len(step_times), start_up_s=start_up_s(done.wall_s, step_times), stopped=done.stopped,
    )
