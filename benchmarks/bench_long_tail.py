"""Time to a full batch when response lengths have a heavy tail: a call per group against chunks of groups.

Every sample of a group gets the same budget (`max_new_tokens` in its prompt row), drawn from a lognormal whose
95th percentile is `--spread` times its 5th; with a random-weight model EOS almost never comes, so the budget is
the length. `--over-sampling` more groups than the batch needs are generated (as DAPO's dynamic sampling does),
and the batch is full once `--groups` of them are done; the rest are aborted. Modes, one engine, one run, each
repeated `--repeats` times on fresh draws of the same lengths:

    chunks   the groups in two chunks per engine, one call after the other (the dispatch before per-group calls)
    groups   a call per group, all at once (what the SGLang backend does now)
    ideal    the full batch's tokens at the engine's throughput on a batch of the same size with equal lengths

    python benchmarks/bench_long_tail.py --backend local                                   # CPU, tiny model
    python benchmarks/bench_long_tail.py --backend sglang --hf-checkpoint DIR --sglang-load-format dummy   # GPU

With `--sglang-load-format dummy` and a real model shape (a config.json of benchmarks/model_configs/ beside a
tokenizer) EOS is a one-in-a-vocabulary event, so lengths follow the budgets.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray

from async_rl.config import parse_config
from async_rl.data.prompt_dataset import PromptRow
from async_rl.placement import create_engine, start_ray
from async_rl.rollout.batch_assembler import BatchAssembler
from async_rl.rollout.dynamic_sampling import split_groups
from async_rl.rollout.engine import ROW_MAX_NEW_TOKENS, SamplingParams
from async_rl.rollout.engine_pool import EnginePool
from async_rl.session import make_grader
from async_rl.weights.transports import CheckpointWeights

REPO = Path(__file__).resolve().parents[1]


def lognormal_budgets(rng: np.random.Generator, n: int, median: int, spread: float, cap: int) -> list[int]:
    """Lengths whose 95th percentile is `spread` times their 5th (sigma = ln(spread) / (2 * 1.645))."""
    sigma = np.log(spread) / (2 * 1.645)
    return [int(min(cap, max(1, round(x)))) for x in rng.lognormal(np.log(median), sigma, size=n)]


def rows(tokenizer_prompt: list[int], budgets: list[int]) -> list[PromptRow]:
    return [PromptRow("bench", list(tokenizer_prompt), "0", {ROW_MAX_NEW_TOKENS: b}) for b in budgets]


def time_to_batch(assembler: BatchAssembler, batch_rows: list[PromptRow], n: int, target: int,
                  params: SamplingParams) -> tuple[float, int]:
    """Seconds until `target` groups are complete, and the tokens those groups hold; the rest are aborted and
    drained before returning, so the next measurement starts on an idle engine."""
    start = time.perf_counter()
    pending = assembler.submit(batch_rows, n, params, "long tail")
    done, tokens, counts = 0, 0, Counter()
    elapsed = None
    for chunk, remaining in assembler._graded_chunks(pending, counts):
        for group in split_groups(chunk):
            if done < target:
                done += 1
                tokens += sum(s.response_length for s in group)
        if done >= target and elapsed is None:
            elapsed = time.perf_counter() - start
            assembler.pool.abort(pending.requests[r] for r in remaining)
    return elapsed, tokens


def throughput(assembler: BatchAssembler, prompt: list[int], n_groups: int, n: int, length: int,
               params: SamplingParams) -> float:
    """Tokens per second on `n_groups` groups that all generate `length` tokens."""
    start = time.perf_counter()
    pending = assembler.submit(rows(prompt, [length] * n_groups), n, params, "uniform")
    tokens = sum(s.response_length for chunk, _ in assembler._graded_chunks(pending, Counter()) for s in chunk)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "sglang"], default="local")
    parser.add_argument("--hf-checkpoint", help="Model directory (local: default builds the tiny model).")
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--n-samples-per-prompt", type=int, default=8)
    parser.add_argument("--over-sampling", type=float, default=1.5, help="Groups generated per group needed.")
    parser.add_argument("--median-tokens", type=int, default=32)
    parser.add_argument("--spread", type=float, default=16.0)
    parser.add_argument("--max-tokens", type=int, default=None, help="Cap on a budget (default: 8 x median).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sglang-mem-fraction-static", type=float, default=0.5)
    args, extra = parser.parse_known_args()  # the rest are the engine's flags (`--sglang-load-format dummy`)
    cap = args.max_tokens or 8 * args.median_tokens
    model = args.hf_checkpoint
    if model is None:  # the embedded default's model, as scripts/run_embedded_cpu.sh builds it
        model = str(REPO / "outputs" / "tiny_model")
        if not (Path(model) / "config.json").is_file():
            subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_model.py"), "--output-dir", model], check=True)
    backend = (["--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1",
                "--sglang-mem-fraction-static", str(args.sglang_mem_fraction_static),
                "--sglang-attention-backend", "triton", "--sglang-sampling-backend", "pytorch"]
               if args.backend == "sglang" else ["--rollout-backend", "local"])
    cfg, _ = parse_config(["--hf-checkpoint", model, "--prompt-data", str(Path(model) / "data" / "train.jsonl"),
                           "--rollout-max-response-len", str(cap), *backend, *extra])
    start_ray(cfg)
    engine = create_engine(cfg, 0)
    managers = {mode: BatchAssembler(EnginePool(lambda rank: engine, 1, CheckpointWeights(), per_group=mode == "groups"),
                                     make_grader(cfg))
                for mode in (["chunks", "groups"] if args.backend == "sglang" else ["chunks"])}
    params = SamplingParams(1.0, 1.0, cap)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    n, target = args.n_samples_per_prompt, args.groups
    generated = round(args.groups * args.over_sampling)
    first = next(iter(managers.values()))
    time_to_batch(first, rows(prompt, [args.median_tokens] * generated), n, target, params)  # warm-up: kernels
    rng = np.random.default_rng(0)
    results: dict[str, list[float]] = {mode: [] for mode in [*managers, "ideal"]}
    for _ in range(args.repeats):
        budgets = lognormal_budgets(rng, generated, args.median_tokens, args.spread, cap)
        batch_tokens = []
        for mode, manager in managers.items():
            elapsed, tokens = time_to_batch(manager, rows(prompt, budgets), n, target, params)
            results[mode].append(elapsed)
            batch_tokens.append(tokens)
        rate = throughput(first, prompt, target, n, max(1, round(statistics.fmean(budgets))), params)
        results["ideal"].append(min(batch_tokens) / rate)
    for m in managers.values():
        m.grader.close()
    ray.kill(engine)
    ray.shutdown()
    base = statistics.fmean(results["chunks"])
    print(f"\n{args.backend}: {target} groups x {n} samples needed, {generated} generated; budgets lognormal, median "
          f"{args.median_tokens}, p95/p5 {args.spread:g}, cap {cap}; {args.repeats} repeats\n")
    print("| mode | time to full batch s (mean) | min-max | vs chunks |")
    print("|---|---:|---|---:|")
    for mode, times in results.items():
        print(f"| {mode} | {statistics.fmean(times):.2f} | {min(times):.2f}-{max(times):.2f} | "
              f"{statistics.fmean(times) / base:.2f} |")


if __name__ == "__main__":
    main()
