"""Evaluate a model or a checkpoint on one or more prompt sets, without training: avg@k and pass@k.

    python -m async_rl.evaluate --load CKPT_DIR --eval-prompt-data aime aime.jsonl math500 math500.jsonl \
        --n-samples-per-eval-prompt 16 [--rm-type math] [--output-dir DIR]

`--load` takes a checkpoint directory (or a `--save` root, whose latest checkpoint is used); without it,
`--hf-checkpoint` is evaluated. Results are printed as a table and written to <output-dir>/eval.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import ray
from transformers import AutoTokenizer

from async_rl.backends import TRAIN_BACKENDS, rollout_backend
from async_rl.checkpoint import resolve_checkpoint
from async_rl.cli import run_cli
from async_rl.config import Config, parse_config
from async_rl.errors import UserInputError
from async_rl.evaluation import Evaluator
from async_rl.placement import create_engine, start_ray
from async_rl.rollout.batch_assembler import BatchAssembler
from async_rl.rollout.engine_pool import EnginePool
from async_rl.session import load_eval_sets, make_grader
from async_rl.startup_checks import EVALUATE_CHECKS, check_startup, dry_run
from async_rl.weights.transports import CheckpointWeights


def model_to_evaluate(cfg: Config) -> Config:
    """With --load, the checkpoint's Hugging Face model stands in for --hf-checkpoint."""
    if not cfg.checkpoint.load:
        return cfg
    checkpoint = resolve_checkpoint(cfg.checkpoint.load)
    models = [m for m in (b.hf_model(checkpoint) for b in TRAIN_BACKENDS.values()) if m is not None]
    if not models:
        raise UserInputError(f"--load {checkpoint}: no trainer's model in it")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hf_checkpoint=str(models[0])))


def evaluate(cfg: Config) -> dict[str, float]:
    cfg = model_to_evaluate(cfg)
    check_startup(cfg, EVALUATE_CHECKS)  # the checks a training start runs on the same flags
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.hf_checkpoint)
    eval_sets = load_eval_sets(cfg, tokenizer)
    grader = make_grader(cfg)
    start_ray(cfg)
    try:
        pool = EnginePool(lambda rank: create_engine(cfg, rank), cfg.num_rollout_engines, CheckpointWeights(),
                          custom_generate=cfg.rollout.custom_generate_function_path,
                          per_group=rollout_backend(cfg).dispatch_per_group)
        metrics = Evaluator(BatchAssembler(pool, grader), eval_sets, cfg.eval.n_samples_per_eval_prompt,
                            cfg.sampling_params(evaluation=True)).evaluate()
    finally:
        grader.close()
        ray.shutdown()
    out = Path(cfg.logging.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"model": cfg.model.hf_checkpoint, **metrics}, indent=2))
    print(f"wrote {out / 'eval.json'}", flush=True)
    return metrics


def print_table(metrics: dict[str, float]) -> None:
    names = sorted({k.split("/")[1] for k in metrics if k.count("/") == 2 and k.startswith("eval/")})
    columns = sorted({k.split("/")[2] for k in metrics if k.count("/") == 2 and ("@" in k)},
                     key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    print("| set | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{metrics[f'eval/{name}/{c}']:.3f}" for c in columns) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    cfg, launch = parse_config(argv, prog="async_rl.evaluate", evaluate_only=True)
    if launch.dry_run:
        run_cli("async_rl.evaluate", lambda: dry_run(model_to_evaluate(cfg), EVALUATE_CHECKS))
    else:
        run_cli("async_rl.evaluate", lambda: print_table(evaluate(cfg)))


if __name__ == "__main__":
    main()
