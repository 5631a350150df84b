"""TrainingSession: the components of one run, built once from the config and shared by both loops.

`train.py` (sync) and `train_async.py` (async) hold only the order of operations; everything they call
lives here or below, so the two loops cannot drift apart.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import torch
from transformers import AutoTokenizer

from async_rl.algorithms.advantages import compute_advantages, overlong_penalty
from async_rl.algorithms.mismatch import MismatchAlert
from async_rl.backends import rollout_backend, train_backend
from async_rl.checkpoint import DriverParts, checkpoint_to_resume, read_driver_parts, save_checkpoint
from async_rl.config import Config
from async_rl.data.prompt_dataset import PromptDataset
from async_rl.errors import TrainingAborted
from async_rl.evaluation import Evaluator, eval_sets_from_flag
from async_rl.invariants import check_first_step, check_probe, probe_tolerance
from async_rl.metrics_logger import MetricsLogger, WandbSettings
from async_rl.placement import check_training_gpus, create_engine, create_trainer, start_ray, trainer_bundles
from async_rl.rollout.batch_assembler import BatchAssembler
from async_rl.rollout.debug_data import load_rollout, save_rollout
from async_rl.rollout.dynamic_sampling import DynamicSampling, KeepRate
from async_rl.rollout.engine_pool import EnginePool
from async_rl.rollout.filters import load_group_filter
from async_rl.rollout.metrics import group_metrics, rollout_metrics
from async_rl.rollout.producer import AdmissionControl, RolloutProducer, sample_from_dict, sample_to_dict
from async_rl.sample import Sample
from async_rl.startup_checks import check_startup, prepare_output_dir
from async_rl.startup_clock import StartupClock
from async_rl.trainer.sharded_batch import ShardedBatch
from async_rl.weights.checksums import check_equal
from async_rl.weights.transports import make_weight_sync
from rewards.deepscaler import lacks_reasoning_marker
from rewards.grading import RewardGrader
from rewards.registry import resolve_reward

logger = logging.getLogger(__name__)


def make_grader(cfg: Config) -> RewardGrader:
    rw = cfg.reward
    return RewardGrader(
        resolve_reward(rw.rm_type, rw.custom_rm_path, rw.group_rm, rw.rm_url), args=cfg.plugin_args(),
        num_workers=rw.reward_num_workers, timeout=rw.reward_timeout, default=rw.reward_default,
    )


def max_prompt_tokens(cfg: Config) -> int | None:
    """Prompts longer than this leave no room for a response within --rollout-max-context-len."""
    context = cfg.rollout.rollout_max_context_len
    return None if context is None else context - 1


def load_eval_sets(cfg: Config, tokenizer) -> dict[str, PromptDataset]:
    d = cfg.data
    return {
        name: PromptDataset(path, tokenizer, input_key=d.input_key, label_key=d.label_key,
                            apply_chat_template=d.apply_chat_template, skip_bad_rows=d.skip_bad_rows,
                            max_prompt_tokens=max_prompt_tokens(cfg))
        for name, path in eval_sets_from_flag(cfg.eval.eval_prompt_data).items()
    }


class TrainingSession:
    def __init__(self, cfg: Config):
        clock = StartupClock()
        check_startup(cfg)  # every problem a start can find, said before Ray starts
        clock.lap("checks")
        checkpoint = checkpoint_to_resume(cfg.checkpoint.load, cfg.checkpoint.save)
        if cfg.checkpoint.load and checkpoint is None:
            logger.warning("--load %s holds no checkpoint yet: a first launch, starting from --hf-checkpoint",
                           cfg.checkpoint.load)
        prepare_output_dir(cfg)
        self.cfg = cfg
        self._save_config()
        random.seed(cfg.logging.seed)
        np.random.seed(cfg.logging.seed)
        torch.manual_seed(cfg.logging.seed)

        rw = cfg.reward
        grader = make_grader(cfg)
        self.warn_on_missing_think = rw.rm_type == "deepscaler" and not rw.custom_rm_path
        r = cfg.rollout
        group_filter = load_group_filter(r.dynamic_sampling_filter_path, grader.args) if r.dynamic_sampling_filter_path else None
        per_round = r.over_sampling_batch_size or r.rollout_batch_size
        self.sampling = DynamicSampling(
            group_filter, per_round, r.max_sampling_rounds if group_filter else 1,
            keep_rate=KeepRate(window=2 * r.rollout_batch_size) if r.adaptive_over_sampling else None,
            margin=per_round / r.rollout_batch_size,
        )
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.hf_checkpoint)
        data = cfg.data
        self.dataset = PromptDataset(
            data.prompt_data, tokenizer, input_key=data.input_key, label_key=data.label_key,
            apply_chat_template=data.apply_chat_template, shuffle=data.rollout_shuffle, seed=cfg.logging.seed,
            skip_bad_rows=data.skip_bad_rows, max_prompt_tokens=max_prompt_tokens(cfg),
        )
        self.eval_sets = load_eval_sets(cfg, tokenizer)

        lg = cfg.logging
        wandb = (WandbSettings(lg.wandb_project, lg.wandb_mode, cfg.to_flat_dict(), lg.wandb_group, lg.wandb_team)
                 if lg.use_wandb else None)
        saved = read_driver_parts(checkpoint) if checkpoint is not None else None
        resume_step = int(saved.state["step"]) if saved is not None else None
        self.metrics_logger = MetricsLogger(lg.output_dir, lg.tensorboard_dir, wandb, resume_step=resume_step)
        clock.lap("data")
        start_ray(cfg)
        clock.lap("ray")
        self.router: Any = None
        try:  # a failure past this point must not leave Ray and its actors running
            check_training_gpus(cfg)
            bundles = trainer_bundles(cfg)
            self.trainer = create_trainer(cfg, bundles)
            clock.lap("trainer")
            if cfg.cluster.offload_train:  # before the engines start, so that their KV cache can take this memory
                ray.get(self.trainer.offload.remote(weights=False))
            self.router = rollout_backend(cfg).start_router(cfg)
            if self.router is not None:
                print(f"sglang-router for the {cfg.num_rollout_engines} rollout engines: {self.router.url}", flush=True)
            router_url = self.router.url if self.router is not None else None
            self.engine_pool = EnginePool(lambda rank: create_engine(cfg, rank, router_url, bundles),
                                          cfg.num_rollout_engines, make_weight_sync(cfg, self.trainer),
                                          custom_generate=cfg.rollout.custom_generate_function_path,
                                          per_group=rollout_backend(cfg).dispatch_per_group)
            self.rollout = BatchAssembler(self.engine_pool, grader)
            print(f"{len(self.engine_pool.engines)} rollout engine(s) started in {self.engine_pool.wait_ready():.0f} s", flush=True)
            clock.lap("engines")
            self.start_step = 0
            self.resumed_rollout_state: dict[str, Any] | None = None
            self._last_batch: tuple[list[Sample], list[float]] | None = None
            if checkpoint is not None:
                self._load(checkpoint, saved)
            elif rollout_backend(cfg).needs_initial_weights(cfg):
                self.wait_weights(self.push_weights(version=0), version=0)
            self.offload_trainer_weights()
            clock.lap("first weights")
            print(clock.summary(), flush=True)
            self.metrics_logger.carry(clock.metrics())
        except BaseException:
            self._stop_router()
            ray.shutdown()
            raise
        self.rollout_params = cfg.sampling_params()
        self.evaluator = Evaluator(self.rollout, self.eval_sets, cfg.eval.n_samples_per_eval_prompt,
                                   cfg.sampling_params(evaluation=True))
        self.skipped_steps = 0
        t = cfg.train
        self.mismatch_alert = MismatchAlert(t.mismatch_alert_k3, t.mismatch_alert_steps, t.mismatch_alert_action == "stop")
        self.last_checkpoint: Path | None = None

    def _save_config(self) -> None:
        """The resolved configuration goes to config.yaml, and one line says where (`--dry-run` prints it whole)."""
        out = Path(self.cfg.logging.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(self.cfg.to_yaml())
        print(f"run directory {out}: configuration in config.yaml (replays with --config), metrics in metrics.jsonl",
              flush=True)

    @property
    def n_samples(self) -> int:
        return self.cfg.rollout.n_samples_per_prompt

    def produce_rollout(self, step: int) -> tuple[list[Sample], dict[str, float]]:
        """One training batch of graded groups (filtered and over-sampled when dynamic sampling is on), or the batch
        saved for this step by --save-debug-rollout-data."""
        if self.cfg.debug.load_debug_rollout_data:
            samples = load_rollout(self.cfg.debug.load_debug_rollout_data, step)
            return samples, self.batch_metrics(samples)
        samples, metrics = self.rollout.generate_batch(
            self.dataset.next_batch, self.cfg.rollout.rollout_batch_size, self.n_samples, self.rollout_params, self.sampling
        )
        return samples, metrics | self.batch_metrics(samples)

    def batch_metrics(self, samples: list[Sample]) -> dict[str, float]:
        """Reward, length and group statistics of a training batch."""
        if not samples:
            return {}
        metrics = rollout_metrics(samples) | group_metrics(samples, self.n_samples)
        if self.warn_on_missing_think:
            metrics |= self._missing_think_check(samples)
        return metrics

    @staticmethod
    def _missing_think_check(samples: list[Sample]) -> dict[str, float]:
        """deepscaler scores 0 without `</think>`: say so loudly when most responses lack it."""
        fraction = sum(lacks_reasoning_marker(s.response) for s in samples) / len(samples)
        if fraction > 0.5:
            logger.warning(
                "%.0f%% of responses have no </think>, which --rm-type deepscaler always scores 0 (no learning "
                "signal); for models that do not think use --rm-type math", 100 * fraction,
            )
        return {"reward/missing_think_frac": fraction}

    def start_producer(self) -> RolloutProducer:
        """The async loop's background rollout, bounded by `--max-staleness` (and restored after `--load`)."""
        r = self.cfg.rollout
        admission = AdmissionControl(r.rollout_batch_size, r.max_staleness, self.sampling.groups_per_round)
        return RolloutProducer(
            self.rollout, self.dataset, self.n_samples, self.rollout_params, self.sampling, admission,
            version=self.start_step, resume_state=self.resumed_rollout_state,
        ).start()

    @contextmanager
    def training_turn(self) -> Iterator[dict[str, float]]:
        """The GPU goes to the trainer for a step (colocated sync runs): the engines release their memory and an
        offloaded trainer comes back; after it the trainer's gradients and optimizer state leave, and the engines
        take their memory back (the weight push that follows refills it). The metrics dict gets the time each
        move took and the GiB the trainer moved."""
        metrics: dict[str, float] = {}
        release = self.cfg.cluster.colocate and not self.cfg.async_mode
        if release:
            start = time.perf_counter()
            self.engine_pool.release_memory()
            metrics["perf/release_memory_time_s"] = time.perf_counter() - start
        if self.cfg.cluster.offload_train:
            metrics |= ray.get(self.trainer.onload.remote())
        try:
            yield metrics
        finally:
            if self.cfg.cluster.offload_train:
                metrics |= ray.get(self.trainer.offload.remote(weights=False))
            if release:
                start = time.perf_counter()
                self.engine_pool.resume_memory()
                metrics["perf/resume_memory_time_s"] = time.perf_counter() - start

    def offload_trainer_weights(self) -> dict[str, float]:
        """After the weight push: the trainer's weights leave the GPU too, until the next training turn."""
        if not self.cfg.cluster.offload_train:
            return {}
        moved = ray.get(self.trainer.offload.remote(weights=True))
        return {"perf/train_offload_weights_time_s": moved["perf/train_offload_time_s"],
                "memory/train_offload_weights_gib": moved["memory/train_offload_gib"]}

    def train(self, step: int, samples: list[Sample]) -> dict[str, float]:
        """Advantages from the (shaped) rewards, then the trainer's optimizer step(s); timed as `perf/train_time_s`."""
        start = time.perf_counter()
        if not samples:
            logger.warning("step %d: no group to train on (all filtered or stale); skipping the optimizer step", step)
            return {"perf/train_time_s": 0.0}
        cfg = self.cfg
        rewards = torch.tensor([s.score for s in samples], dtype=torch.float32)
        metrics = {}
        if cfg.reward.overlong_buffer_len:
            penalty = overlong_penalty(
                torch.tensor([s.response_length for s in samples]), cfg.rollout.rollout_max_response_len,
                cfg.reward.overlong_buffer_len, cfg.reward.overlong_penalty_factor,
            )
            rewards = rewards + penalty
            metrics["rollout/overlong_penalty_mean"] = float(penalty.mean())
        advantages = compute_advantages(
            cfg.train.advantage_estimator, rewards, self.n_samples, normalize_std=cfg.train.normalize_advantages_std
        )
        if cfg.debug.save_debug_rollout_data:
            save_rollout(cfg.debug.save_debug_rollout_data, step, samples)
        metrics |= ray.get(self.trainer.train_sharded.remote(self._hand_over(samples, advantages.tolist())))
        metrics["perf/train_time_s"] = time.perf_counter() - start
        tokens = sum(len(s.prompt_tokens) + s.response_length for s in samples)
        metrics["perf/train_tokens_per_s"] = tokens / metrics["perf/train_time_s"]
        self._last_batch = (samples, advantages.tolist())
        if cfg.train.check_invariants and step == self.start_step:
            checked = check_first_step(step, samples, metrics, quantized_rollout=cfg.rollout.rollout_quantization != "none",
                                       logprob_tol=cfg.train.invariant_logprob_tol)
            print(f"invariants hold at step {step}: {', '.join(checked)}", flush=True)
        self.mismatch_alert.observe(step, metrics)
        self.skipped_steps += int(metrics["train/skipped_steps"])
        limit = cfg.train.max_skipped_steps
        if limit is not None and self.skipped_steps > limit:
            raise TrainingAborted(
                f"{self.skipped_steps} optimizer steps skipped for a NaN/inf loss or gradient, more than "
                f"--max-skipped-steps {limit} (last at step {step})"
            )
        return metrics

    def _hand_over(self, samples: list[Sample], advantages: list[float]) -> ShardedBatch:
        """The batch into the object store, a shard per data-parallel rank: the trainer's ranks fetch their own."""
        return ShardedBatch.put(samples, advantages, train_backend(self.cfg).shard_rows(self.cfg, samples))

    def push_weights(self, version: int) -> list[ray.ObjectRef]:
        """Send the trainer's weights to every engine, bucket by bucket (FP8 pairs for an FP8 rollout).

        Through the object store (`--update-weight-mode tensor`, every CPU run) this returns once the trainer
        has exported the last bucket, and each engine applies them after the generate calls already queued
        on it; by broadcast it returns at once, and engines pause generation while the buckets arrive. The
        refs resolve when every engine holds the new weights.
        """
        return self.engine_pool.update_weights(version)

    def wait_weights(self, refs: list[ray.ObjectRef], version: int) -> None:
        """Wait for a push (a dead engine is replaced and refilled); with --check-weight-update-equal, then compare
        what every engine holds with what the trainer sent."""
        self.engine_pool.wait_weights(refs)
        if refs and self.cfg.rollout.check_weight_update_equal:
            self._check_weights(version)

    def _check_weights(self, version: int) -> None:
        r = self.cfg.rollout
        engines = self.engine_pool.engines
        held = ray.get([e.weight_digests.options(concurrency_group="control").remote() for e in engines])
        dtypes = {name: dtype for name, (dtype, _) in held[0].items()}
        pushed = ray.get(self.trainer.weight_digests.remote(r.update_weight_buffer_size, r.fp8_layout,
                                                             r.force_pow_2_scale, dtypes))
        for rank, digests in enumerate(held):
            check_equal(pushed, digests, rank, version)

    def should_evaluate(self, step: int) -> bool:
        interval = self.cfg.eval.eval_interval
        return bool(self.eval_sets) and (step == 0 or step == self.cfg.rollout.num_rollout or (interval and step % interval == 0))

    def evaluate(self) -> dict[str, float]:
        return self.evaluator.evaluate()

    def should_save(self, step: int, stopping: bool = False) -> bool:
        """At the interval, at the end, and when a stop signal ends the run early (with --save set)."""
        c = self.cfg.checkpoint
        return bool(c.save) and (stopping or step == self.cfg.rollout.num_rollout
                                 or bool(c.save_interval) and step % c.save_interval == 0)

    def save(self, step: int, data_state: dict[str, int], rollout_state: dict[str, Any] | None = None) -> None:
        """Checkpoint after `step` completed steps; `data_state` is the dataset position of the next unseen prompt.

        `rollout_state` (async) holds the buffered groups and the prompts still generating, so none is lost.
        """
        parts = DriverParts({"step": step, "dataset": data_state}, self.engine_pool.rng_states(), rollout_state)
        if self.cfg.train.check_invariants and self._last_batch:
            samples, advantages = self._last_batch
            parts.probe = {"samples": [sample_to_dict(s) for s in samples], "advantages": advantages,
                           "result": ray.get(self.trainer.probe_sharded.remote(self._hand_over(samples, advantages)))}
        self.last_checkpoint = save_checkpoint(self.cfg.checkpoint.save, step, parts,
                                               lambda path: ray.get(self.trainer.save.remote(path)))

    def _check_probe(self, checkpoint: Path, probe: dict[str, Any]) -> None:
        backend = train_backend(self.cfg)
        saved_layout = backend.checkpoint_layout(checkpoint)  # None: a one-process trainer's checkpoint
        layout = ray.get(self.trainer.parallel_layout.remote()) if saved_layout else None
        tolerance = probe_tolerance(saved_layout, layout, backend.trains_in_bf16(self.cfg))
        if tolerance is None:
            print(f"invariant not checked after --load: the probe was recorded under {saved_layout}, and BF16 sums under "
                  f"{layout} run in another order", flush=True)
            return
        samples = [sample_from_dict(d) for d in probe["samples"]]
        recomputed = ray.get(self.trainer.probe_sharded.remote(self._hand_over(samples, probe["advantages"])))
        check_probe(probe["result"], recomputed, str(checkpoint), tolerance)
        print(f"invariant holds after --load: probe loss and grad norm equal ({probe['result']} saved, {recomputed} "
              f"now, relative tolerance {tolerance[0]:g})", flush=True)

    def _load(self, checkpoint: Path, parts: DriverParts) -> None:
        with self.training_turn():
            ray.get(self.trainer.load.remote(str(checkpoint)))
            if self.cfg.train.check_invariants and parts.probe is not None:
                self._check_probe(checkpoint, parts.probe)
        engines = self.engine_pool.engines
        if len(parts.engine_rng) == len(engines):  # same engine count: continue their sampling streams
            ray.get([e.load_rng_state.remote(s) for e, s in zip(engines, parts.engine_rng) if s is not None])
        self.dataset.load_state_dict(parts.state["dataset"])
        self.start_step = int(parts.state["step"])
        self.resumed_rollout_state = parts.rollout_buffer
        self.wait_weights(self.push_weights(self.start_step), self.start_step)
        print(f"resumed from {checkpoint} at step {self.start_step}", flush=True)

    def close(self) -> None:
        self.rollout.grader.close()
        self.metrics_logger.close()
        self.engine_pool.close()
        ray.kill(self.trainer)
        self._stop_router()
        ray.shutdown()

    def _stop_router(self) -> None:
        if self.router is not None:
            self.router.stop()

    def __enter__(self) -> "TrainingSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
