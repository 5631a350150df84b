"""The learning workload on verl (`verl.trainer.main_ppo`): FSDP actor and SGLang rollout colocated on one GPU.

verl is installed separately (`bundle_verl.sh`, whose install script sets VERL_PYTHONPATH). Its prompts go
through the tokenizer's chat template, so the model copy it loads gets one that returns the prompt unchanged:
both systems see the same tokens. Without flash-attn, verl's actor runs with sdpa attention and without packed
batches (sdpa would attend across packed sequences); that is said beside its numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from launch import launch
from workload import Result, StepTimes, Workload, mean_after_warmup, start_up_s

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IDENTITY_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
_METRIC = re.compile(r"(\S+?):(-?[0-9.]+(?:e[-+]?[0-9]+)?|nan|inf)(?= - |$)")


def prepare_model(model: Path, out: Path) -> Path:
    copy = out / "model"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("data"))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = IDENTITY_TEMPLATE
    (copy / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    return copy


def write_parquet(jsonl: Path, parquet: Path, split: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    table = pa.Table.from_pylist([
        {"data_source": "arithmetic", "prompt": [{"role": "user", "content": row["prompt"]}],
         "reward_model": {"style": "rule", "ground_truth": str(row["label"])},
         "extra_info": {"split": split, "index": i}}
        for i, row in enumerate(rows)
    ])
    pq.write_table(table, parquet)


def overrides(w: Workload, model: Path, out: Path, seed: int) -> list[str]:
    a, r = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    return [
        "algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=False",
        f"data.train_files={out / 'train.parquet'}", f"data.val_files={out / 'eval.parquet'}",
        f"data.train_batch_size={w.rollout_batch_size}", "data.max_prompt_length=16",
        f"data.max_response_length={w.max_response_len}", "data.dataloader_num_workers=0", f"data.seed={seed}",
        f"actor_rollout_ref.model.path={model}", "actor_rollout_ref.model.use_remove_padding=False",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"{a}.optim.lr={w.lr}", f"{a}.ppo_mini_batch_size={w.rollout_batch_size}", f"{a}.ppo_micro_batch_size_per_gpu=64",
        f"{a}.use_kl_loss=False", f"{a}.entropy_coeff=0", f"{a}.clip_ratio_low={w.eps_clip}",
        f"{a}.clip_ratio_high={w.eps_clip_high}", f"{a}.loss_agg_mode=token-mean",
        f"{r}.name=sglang", f"{r}.n={w.n_samples_per_prompt}", f"{r}.tensor_model_parallel_size=1",
        f"{r}.gpu_memory_utilization={w.gpu_memory_fraction}", f"{r}.temperature={w.temperature}",
        f"{r}.log_prob_micro_batch_size_per_gpu=64", f"{r}.val_kwargs.n={w.n_samples_per_eval_prompt}",
        f"{r}.val_kwargs.temperature={w.temperature}", f"{r}.val_kwargs.do_sample=True",
        f"+{r}.engine_kwargs.sglang.attention_backend=triton", f"+{r}.engine_kwargs.sglang.sampling_backend=pytorch",
        f"reward.custom_reward_function.path={HERE / 'verl_reward.py'}", "reward.custom_reward_function.name=compute_score",
        "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.logger=[console]",
        f"trainer.total_training_steps={w.num_rollout}", f"trainer.test_freq={w.eval_interval}", "trainer.save_freq=-1",
        "trainer.val_before_train=True", "trainer.project_name=head_to_head", "trainer.experiment_name=verl",
        f"trainer.default_local_dir={out / 'checkpoints'}",
    ]


def parse_console(text: str) -> list[dict]:
    """verl's console logger prints `step:N - key:value - ...` once per step (and once for validation)."""
    rows = []
    for line in text.splitlines():
        start = line.find("step:")
        if start < 0:
            continue
        row = {k: float(v) for k, v in _METRIC.findall(line[start:])}
        if "step" in row:
            rows.append(row)
    return rows


def eval_curve(rows: list[dict]) -> list[tuple[int, float]]:
    curve = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("val-core/") and "mean@" in key:
                curve[int(row["step"])] = value
    return sorted(curve.items())


def run(w: Workload, model: Path, out: Path, seed: int, extra: list[str], budget_s: float | None = None) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    verl_model = prepare_model(model, out)
    write_parquet(model / "data" / "train.jsonl", out / "train.parquet", "train")
    write_parquet(model / "data" / "eval.jsonl", out / "eval.parquet", "eval")
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides(w, verl_model, out, seed), *extra]
    paths = [os.environ.get("VERL_PYTHONPATH", ""), str(REPO), os.environ.get("PYTHONPATH", "")]  # see bundle_verl.sh
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    done = launch("verl", cmd, out / "verl.log", out, budget_s, env)
    text = done.log
    rows = [r for r in parse_console(text) if "timing_s/step" in r]
    if len(rows) < 2:
        raise RuntimeError(f"verl finished {len(rows)} steps in {done.wall_s:.0f} s")
    first = 1  # verl counts steps from 1; the first pays its one-time costs
    times = StepTimes(
        step=mean_after_warmup([dict(r, **{"timing_s/step": r["timing_s/step"] - r.get("timing_s/testing", 0.0)})
                                for r in rows], "timing_s/step", first),
        generation=mean_after_warmup(rows, "timing_s/gen", first),
        log_probs=sum(mean_after_warmup(rows, k, first) or 0.0 for k in ("timing_s/old_log_prob", "timing_s/ref")),
        training=mean_after_warmup(rows, "timing_s/update_actor", first),
        weight_update=mean_after_warmup(rows, "timing_s/update_weights", first),
    )
    response_len = mean_after_warmup(rows, "response_length/mean", first) or 0.0
    prompt_len = mean_after_warmup(rows, "prompt_length/mean", first) or 0.0
    return Result(
        "verl", times, w.samples_per_step, response_len * w.samples_per_step,
        (response_len + prompt_len) * w.samples_per_step, done.peak_gpu_memory_gib, eval_curve(parse_console(text)),
        note="FSDP actor with sdpa attention and unpacked batches (no flash-attn installed); SGLang rollout",
        steps_done=len(rows), start_up_s=start_up_s(done.wall_s, [r["timing_s/step"] for r in rows]),
        stopped=done.stopped,
    )
