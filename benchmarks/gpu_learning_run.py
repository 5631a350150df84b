"""Does the real stack learn? SGLang FP8 rollouts feeding the Megatron trainer, sync and async, on one GPU.

Builds a model of tens of millions of parameters for 3-digit column addition (`tools/make_tiny_model.py`, SFT'd
on the GPU against a teacher that slips, so that greedy answers are mostly right and sampled ones right only
some of the time), then trains it with deepscaler rewards on `<think>...</think>\\boxed{}` answers, DAPO dynamic
sampling and a held-out eval set, in five arms of the same number of steps:

    1 bf16-sync           BF16 rollouts, synchronous loop (engine and trainer take turns on the GPU)
    2 fp8-tis-async       blockwise-FP8 rollouts + TIS, async (engine and trainer resident side by side)
    3 fp8-async-no-tis    arm 2 without TIS
    4 fp8-tis-async-fp8   arm 2 with FP8 training (Transformer Engine, delayed scaling)
    5 fp8-tis-async-partial  arm 2 with --partial-rollout (generation aborted at each push, continued after it)
      bf16-async          arm 2 with BF16 rollouts (only with --arms: is the async step bound by FP8 or by sharing?)
      fp8-mis-async       arm 2 with masked importance sampling, tokens whose ratio left [0.5, 2] dropped
                          (only with --arms)

    python benchmarks/gpu_learning_run.py --output-dir outputs/learning_run             # GPU
    python benchmarks/gpu_learning_run.py --output-dir /tmp/lr --cpu --num-rollout 2    # CPU: local backends, tiny

Arms whose metrics are complete are not run again, so the arms can be spread over several invocations
(`--arms`); `--parallel` runs the selected arms at once (for curves only: they share the GPU, so compare step
times only between arms that ran alone; give each engine less memory when many run, e.g.
`--sglang-mem-fraction-static 0.06` for six on one GPU: flags the script does not know go to every arm).
`--seeds 1 2 3` repeats every arm with each RL seed (one SFT model for all; seed 1 writes to `ARM/`, seed N to
`ARM.seedN/`) and adds a table of each arm's mean and range over its seeds: one seed's final eval moves by several
points between repeats, too much to compare arms within 5%. It ends with a table per arm (from the runs' own
metrics.jsonl), where the step time goes, and `runs.png` (tools/plot_run.py) with the arms' curves overlaid.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from make_tiny_model import build  # noqa: E402
from plot_run import plot_runs, read_metrics  # noqa: E402

FP8 = ["--rollout-quantization", "fp8", "--rollout-fp8-granularity", "block"]
ARMS = {
    "bf16-sync": ["--use-tis", "--adaptive-over-sampling"],  # rounds sized by keep rate, as async admission is
    "fp8-tis-async": [*FP8, "--use-tis", "--async"],
    "fp8-async-no-tis": [*FP8, "--no-use-tis", "--async"],
    "fp8-tis-async-fp8": [*FP8, "--use-tis", "--async", "--fp8-format", "e4m3", "--fp8-recipe", "delayed"],
    "fp8-tis-async-partial": [*FP8, "--use-tis", "--async", "--partial-rollout"],
    "bf16-async": ["--use-tis", "--async"],  # not run by default: separates what async saves from what FP8 costs
    "fp8-mis-async": [*FP8, "--use-tis", "--tis-mode", "mask", "--tis-clip-low", "0.5", "--async"],
}
DEFAULT_ARMS = [arm for arm in ARMS if arm not in ("bf16-async", "fp8-mis-async")]
BASELINE = "bf16-sync"
# GPU: a 25M-parameter model (hidden 512, 6 layers); CPU: the embedded model's size, enough to run every arm
MODEL = {
    "gpu": dict(hidden_size=512, num_layers=6, digits=3, sft_steps=1200, batch_size=256, lr=6e-4, n_eval=500,
                error_rate=0.7, device="cuda"),
    "cpu": dict(hidden_size=64, num_layers=2, digits=2, sft_steps=300, batch_size=64, lr=3e-3, n_eval=32,
                error_rate=0.6, device="cpu"),
}
BACKENDS = {
    "gpu": ["--rollout-backend", "sglang", "--train-backend", "megatron", "--bf16", "--actor-num-gpus-per-node", "1",
            "--colocate", "--sglang-mem-fraction-static", "0.2", "--sglang-attention-backend", "triton",
            "--sglang-sampling-backend", "pytorch", "--sglang-context-length", "256"],
    "cpu": ["--rollout-backend", "local", "--train-backend", "torch"],
}


def needs_transformer_engine(arm: str) -> bool:
    return "--fp8-format" in ARMS[arm]


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return root / (arm if seed == 1 else f"{arm}.seed{seed}")


def arm_of(run: str) -> str:
    """The arm of a run directory's name: `fp8-tis-async.seed2` -> `fp8-tis-async`."""
    return run.split(".")[0]


def run_flags(model: Path, out: Path, seed: int, args) -> list[str]:
    """What every arm shares: data, rewards, dynamic sampling, eval, sizes."""
    return [
        "--hf-checkpoint", str(model), "--prompt-data", str(model / "data" / "train.jsonl"),
        "--eval-prompt-data", "arithmetic", str(model / "data" / "eval.jsonl"), "--output-dir", str(out),
        "--num-rollout", str(args.num_rollout), "--rollout-batch-size", str(args.rollout_batch_size),
        "--n-samples-per-prompt", "8", "--rollout-max-response-len", "64", "--rollout-temperature", "1.0",
        "--rm-type", "deepscaler",
        "--dynamic-sampling-filter-path", "async_rl.rollout.filters.check_reward_nonzero_std",
        "--over-sampling-batch-size", str(args.rollout_batch_size * 3 // 2),
        "--eval-interval", str(args.eval_interval), "--n-samples-per-eval-prompt", "2", "--eval-temperature", "1.0",
        "--eval-max-response-len", "64", "--lr", str(args.lr), "--eps-clip", "0.2", "--eps-clip-high", "0.28",
        "--micro-batch-size", str(min(64, args.rollout_batch_size * 8)), "--seed", str(seed),
        *BACKENDS["cpu" if args.cpu else "gpu"],
    ]


def complete(out: Path, num_rollout: int) -> bool:
    """The run reached its last step and its final evaluation."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = read_metrics(path)
    return any(r.get("step") == num_rollout and "eval/reward_mean" in r for r in rows)


def run_arms(runs: list[tuple[str, int]], model: Path, root: Path, args, extra: list[str]) -> list[str]:
    """Train the (arm, seed) runs, one after another or (`--parallel`) all at once, each in its own process with its
    own Ray; returns the names of those that failed. A half-finished earlier run is removed first; the wall time of
    each is written beside its metrics."""
    pending, failed = list(runs), []
    while pending:
        batch, pending = (pending, []) if args.parallel else (pending[:1], pending[1:])
        running = {}
        for arm, seed in batch:
            out = run_dir(root, arm, seed)
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "async_rl.train", *run_flags(model, out, seed, args), *ARMS[arm], *extra]
            print(f"[{out.name}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            log = (root / f"{out.name}.log").open("w")
            running[out] = (subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), time.perf_counter(), log)
        for out, (process, start, log) in running.items():
            code = process.wait()
            wall = time.perf_counter() - start
            log.close()
            if code:
                tail = "\n".join((root / f"{out.name}.log").read_text().splitlines()[-30:])
                print(f"[{out.name}] failed (exit {code}); the end of {root / f'{out.name}.log'}:\n{tail}", file=sys.stderr)
                failed.append(out.name)
                continue
            (out / "wall_time_s").write_text(f"{wall:.1f}\n")
            print(f"[{out.name}] done in {wall:.0f} s", file=sys.stderr, flush=True)
    return failed


def mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def summarize(out: Path) -> dict[str, float | None]:
    """An arm's numbers, all from its own metrics.jsonl (and the wall time the script measured)."""
    rows = read_metrics(out / "metrics.jsonl")
    evals = [(r["step"], r["eval/reward_mean"]) for r in rows if "eval/reward_mean" in r]
    timed = [r for r in rows if "perf/step_time_s" in r]
    steps = [r for r in timed if r["step"] > 0]  # step 0 pays one-time costs (kernel JIT, first push): apart
    response_tokens = sum(r.get("rollout/samples", 0) * r.get("rollout/response_len_mean", 0) for r in steps)
    step_time = sum(r["perf/step_time_s"] for r in steps)
    wall = out / "wall_time_s"
    return {
        "eval_start": evals[0][1], "eval_final": evals[-1][1], "eval_curve": evals, "steps": len(timed),
        "first_step_s": next((r["perf/step_time_s"] for r in timed if r["step"] == 0), None),
        "wall_s": float(wall.read_text()) if wall.is_file() else None,
        "trained_tok_s": response_tokens / step_time if step_time else None,
        "train_tok_s": mean(steps, "perf/train_tokens_per_s"), "step_s": mean(steps, "perf/step_time_s"),
        "overlap": mean(steps, "perf/overlap_ratio"), "mismatch": mean(steps, "train/rollout_logprob_abs_diff"),
        "rollout_s": mean(steps, "perf/rollout_time_s"),
        "rollout_wait_s": mean(steps, "perf/rollout_wait_s") or mean(steps, "perf/rollout_time_s"),  # sync: all
        "train_s": mean(steps, "perf/train_time_s"), "push_s": mean(steps, "perf/update_weights_time_s"),
        "memory_s": sum(mean(steps, k) or 0.0 for k in ("perf/release_memory_time_s", "perf/resume_memory_time_s",
                                                         "perf/train_onload_time_s", "perf/train_offload_time_s",
                                                         "perf/train_offload_weights_time_s")),
    }


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def baseline_of(name: str) -> str:
    """The baseline run of the same seed: `fp8-tis-async.seed2` -> `bf16-sync.seed2`."""
    return name.replace(arm_of(name), BASELINE, 1)


def print_tables(results: dict[str, dict]) -> None:
    print("| arm | eval start | eval final | gain | final / bf16-sync | steps | wall s | response tok/s | "
          "trainer tok/s | step s | vs sync | overlap | mismatch/token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm, r in results.items():
        base = results.get(baseline_of(arm))
        vs_final = r["eval_final"] / base["eval_final"] if base else None
        vs_step = r["step_s"] / base["step_s"] if base and r["step_s"] and base["step_s"] else None
        print(f"| {arm} | {r['eval_start']:.3f} | {r['eval_final']:.3f} | {r['eval_final'] - r['eval_start']:+.3f} | "
              f"{fmt(vs_final, '.3f')} | {r['steps']} | {fmt(r['wall_s'], '.0f')} | {fmt(r['trained_tok_s'], ',.0f')} | "
              f"{fmt(r['train_tok_s'], ',.0f')} | {fmt(r['step_s'], '.2f')} | {fmt(vs_step, '.2f')} | {fmt(r['overlap'], '.2f')} | "
              f"{fmt(r['mismatch'], '.4f')} |")
    print("\nwhere a step's time goes (means per step after the first, seconds; sync waits for all of its rollout, "
          "async only for what training did not hide; the first step, with its one-time kernel compilation and "
          "first weight push, apart):\n")
    print("| arm | step | rollout (generation span) | waited for rollout | train | weight push | memory moves | first step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for arm, r in results.items():
        print(f"| {arm} | {fmt(r['step_s'], '.2f')} | {fmt(r['rollout_s'], '.2f')} | {fmt(r['rollout_wait_s'], '.2f')} | "
              f"{fmt(r['train_s'], '.2f')} | {fmt(r['push_s'], '.2f')} | {r['memory_s']:.2f} | "
              f"{fmt(r['first_step_s'], '.2f')} |")
    print("\neval reward by step:\n")
    for arm, r in results.items():
        print(f"- {arm}: " + ", ".join(f"{step}: {value:.3f}" for step, value in r["eval_curve"]))


def print_seed_table(results: dict[str, dict]) -> None:
    """Each arm over its seeds: the mean and range of its final eval and gain, and its mean final eval over the
    baseline's (the comparison one seed is too noisy for)."""
    by_arm: dict[str, list[dict]] = {}
    for name, r in results.items():
        by_arm.setdefault(arm_of(name), []).append(r)
    final = {arm: statistics.fmean(r["eval_final"] for r in rs) for arm, rs in by_arm.items()}
    print("\nover seeds:\n")
    print("| arm | seeds | eval final mean | min-max | gain mean | min-max | final / bf16-sync (means) | step s |")
    print("|---|---:|---:|---|---:|---|---:|---:|")
    for arm, rs in by_arm.items():
        finals = [r["eval_final"] for r in rs]
        gains = [r["eval_final"] - r["eval_start"] for r in rs]
        steps = [r["step_s"] for r in rs if r["step_s"]]
        vs = final[arm] / final[BASELINE] if BASELINE in final else None
        print(f"| {arm} | {len(rs)} | {final[arm]:.3f} | {min(finals):.3f}-{max(finals):.3f} | "
              f"{statistics.fmean(gains):+.3f} | {min(gains):+.3f} to {max(gains):+.3f} | {fmt(vs, '.3f')} | "
              f"{fmt(statistics.fmean(steps) if steps else None, '.2f')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true", help="Local engine and torch trainer on the CPU, a tiny model.")
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), default=DEFAULT_ARMS,
                        help="Arms to run; none: only build the SFT model and tabulate the arms already complete.")
    parser.add_argument("--num-rollout", type=int, default=16)
    parser.add_argument("--rollout-batch-size", type=int, default=32)
    parser.add_argument("--eval-interval", type=int, default=4)
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="RL seeds: every arm runs once per seed (the SFT model is the same for all).")
    parser.add_argument("--parallel", action="store_true",
                        help="Run the arms at the same time (they share the GPU, so their step times are not comparable).")
    args, extra = parser.parse_known_args()  # the rest goes to every arm's train.py
    kind = "cpu" if args.cpu else "gpu"
    model = args.output_dir / "model"
    if not model.is_dir():
        accuracy = build(str(model), seed=1, **MODEL[kind])
        (args.output_dir / "sft_accuracy.json").write_text(json.dumps(accuracy))
    print(f"SFT accuracy on held-out prompts: {(args.output_dir / 'sft_accuracy.json').read_text().strip()}", flush=True)
    te = importlib.util.find_spec("transformer_engine") is not None and not args.cpu
    to_run = []
    for arm in args.arms:
        if needs_transformer_engine(arm) and not te:
            print(f"[{arm}] skipped: FP8 training needs Transformer Engine on a GPU", file=sys.stderr)
            continue
        for seed in args.seeds:
            out = run_dir(args.output_dir, arm, seed)
            if complete(out, args.num_rollout):
                print(f"[{out.name}] already complete in {out}", file=sys.stderr)
            else:
                to_run.append((arm, seed))
    failed = run_arms(to_run, model, args.output_dir, args, extra)
    done = {out.name: out for arm in ARMS for seed in args.seeds
            if complete(out := run_dir(args.output_dir, arm, seed), args.num_rollout)}
    if not done and not args.arms:
        print("no arm is complete yet", file=sys.stderr)
        return
    if not done:
        raise SystemExit(f"no arm has finished in {args.output_dir}: {', '.join(failed)} failed")
    results = {arm: summarize(out) for arm, out in done.items()}
    print_tables(results)
    if len(args.seeds) > 1:
        print_seed_table(results)
    png = args.output_dir / "runs.png"
    plot_runs({arm: read_metrics(out / "metrics.jsonl") for arm, out in done.items()}, png, "learning run")
    print(f"\nwrote {png}")
    if failed:
        raise SystemExit(f"failed arms: {', '.join(failed)}")


if __name__ == "__main__":
    main()
