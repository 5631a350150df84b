"""The RL update every trainer backend shares; a backend supplies the forward pass and the optimizer.

One `train_step` takes a rollout's samples (this rank's share of them, under data parallelism), recomputes
their log-probs at the current weights (the proximal policy the PPO ratio is taken against; the reference
policy's too when a KL term is on), then takes one optimizer step per global batch. Each global batch is
cut into micro-batches by sample count or by token budget; each micro-batch's loss is weighted by its share
of the global batch, so the accumulated gradient is that of the loss over the whole global batch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
from transformers import AutoTokenizer

from async_rl.algorithms.losses import aggregate, kl_penalty, policy_loss
from async_rl.algorithms.mismatch import mismatch_metrics, mismatch_sums
from async_rl.config.sections import TrainConfig
from async_rl.net import node_address
from async_rl.sample import Sample
from async_rl.trainer.batch import PackedBatch, micro_batch_indices, pack
from async_rl.trainer.lr_schedule import learning_rate
from async_rl.trainer.sharded_batch import ShardedBatch
from async_rl.weights.checksums import digests_as
from async_rl.weights.sync import NamedTensors, weight_buckets
from async_rl.weights.transports.nccl_broadcast import WeightBroadcaster
from async_rl.weights.transports.object_store import export_buckets
from rewards.registry import load_function


def needs_reference(cfg: TrainConfig) -> bool:
    """A KL in the reward or in the loss needs the reference (initial) policy's log-probs."""
    return cfg.kl_coef > 0 or cfg.use_kl_loss


def is_max_stat(stat: str) -> bool:
    """Stats named *_max* are maxima over the batch; the others are means."""
    return "_max" in stat


def use_deterministic_kernels(cfg: TrainConfig, on_gpu: bool) -> bool:
    """Under `--deterministic-mode` or `--check-invariants`, make this process's GPU kernels deterministic (cuBLAS
    workspace, torch's deterministic implementations such as the MoE token un-permutation's index_add, Transformer
    Engine's deterministic attention); returns whether it did. CPU kernels are deterministic already. Ops without a
    deterministic version warn instead of failing the run."""
    if not (cfg.deterministic_mode or cfg.check_invariants) or not on_gpu:
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] = "0"
    torch.use_deterministic_algorithms(True, warn_only=True)
    return True


class Offloader(Protocol):
    """Moves a trainer's GPU state to the host and back (`--offload-train`)."""

    def offload_optimizer(self) -> None: ...

    def offload_weights(self) -> None: ...

    def onload(self) -> None: ...


@dataclass
class MicroBatch:
    rows: list[int]  # positions of its samples in the step's sample list
    batch: PackedBatch
    advantages: torch.Tensor  # [rows]
    old: torch.Tensor | None = None  # log-probs at the weights before this step
    ref: torch.Tensor | None = None  # log-probs under the reference policy


class PolicyTrainer:
    """Backends set `model`, `ref_model`, `pad_token_id`, `device` and implement the hooks below."""

    model: Any
    ref_model: Any = None
    pad_token_id: int
    device: torch.device
    offloader: Offloader | None = None

    def __init__(self, cfg: TrainConfig, *, global_batch_size: int, temperature: float,
                 max_tokens_per_micro_batch: int | None = None, total_optimizer_steps: int = 1):
        self.cfg = cfg
        self.total_optimizer_steps = total_optimizer_steps  # where the learning-rate decay ends by default
        self.optimizer_steps = 0  # applied steps: the learning-rate schedule's clock, checkpointed
        self.global_batch_size = global_batch_size
        self.temperature = temperature
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.version = 0
        path = cfg.custom_tis_function_path
        self.tis_function = load_function(path, "--custom-tis-function-path") if path else None
        self.broadcaster = WeightBroadcaster()

    def load_tokenizer(self, hf_checkpoint: str) -> None:
        """The checkpoint's tokenizer; padding uses its pad token, else EOS."""
        self.tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id

    # ---- backend hooks --------------------------------------------------------------------------------
    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Policy weights under Hugging Face names."""
        raise NotImplementedError

    def forward_log_probs(self, model: Any, batch: PackedBatch, with_entropy: bool = False):
        """Response-token log-probs [rows, max_response] (and entropies) of `batch` under `model`."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        raise NotImplementedError

    def optimizer_step(self) -> tuple[float, bool]:
        """Clip and apply the accumulated gradient unless its norm is not finite; (pre-clip norm, applied)."""
        raise NotImplementedError

    def gradient_norm(self) -> float:
        """Norm of the accumulated gradient over the whole model."""
        raise NotImplementedError

    def learning_rate(self) -> float:
        raise NotImplementedError

    def set_learning_rate(self, lr: float) -> None:
        raise NotImplementedError

    def set_train_mode(self) -> None:
        self.model.train()

    def gradient_scale(self) -> float:
        """Factor on each rank's loss so that the reduced gradient is the global batch's (DP averages)."""
        return 1.0

    def all_reduce_stats(self, sums: dict[str, float]) -> dict[str, float]:
        """Sum (max for *_max*) per-rank statistics over data-parallel ranks."""
        return sums

    def micro_batch_groups(self, samples: list[Sample]) -> list[list[int]]:
        """One global batch cut into micro-batches (index lists), by sample count or by token budget."""
        return micro_batch_indices(samples, self.cfg.micro_batch_size, self.max_tokens_per_micro_batch)

    def parallel_layout(self) -> dict[str, int]:
        """The process layout a checkpoint is written under: one process unless a backend shards the model."""
        return {"world": 1, "tensor": 1, "expert": 1, "data": 1}

    # ---- GPU memory for a colocated engine -------------------------------------------------------------
    def offload(self, weights: bool) -> dict[str, float]:
        """Free this rank's GPU memory for the engines: gradients and optimizer state after a step (the weight push
        still reads the weights), the weights too once pushed. Returns the time and the GiB given back."""
        return self._timed_move("offload", lambda: self._offloader().offload_weights() if weights
                                else self._offloader().offload_optimizer())

    def onload(self) -> dict[str, float]:
        """Everything back on the GPU before a step."""
        return self._timed_move("onload", lambda: self._offloader().onload())

    def _offloader(self) -> Offloader:
        if self.offloader is None:
            self.offloader = self.make_offloader()
        return self.offloader

    def make_offloader(self) -> Offloader:
        raise NotImplementedError

    def _timed_move(self, direction: str, move) -> dict[str, float]:
        start, reserved = time.perf_counter(), torch.cuda.memory_reserved()
        move()
        moved = abs(torch.cuda.memory_reserved() - reserved) / 2**30
        return {f"perf/train_{direction}_time_s": time.perf_counter() - start, f"memory/train_{direction}_gib": moved}

    # ---- shared RL step -------------------------------------------------------------------------------
    def _split(self, samples: list[Sample], advantages: list[float] | None = None) -> list[list[MicroBatch]]:
        """Optimizer steps, each a list of micro-batches (advantages ride along with their rows)."""
        adv = torch.tensor(advantages if advantages is not None else [0.0] * len(samples), dtype=torch.float32)
        steps = []
        for start in range(0, len(samples), self.global_batch_size):
            chunk = range(start, min(start + self.global_batch_size, len(samples)))
            groups = self.micro_batch_groups([samples[i] for i in chunk])
            rows = [[chunk[i] for i in ids] for ids in groups]
            steps.append([MicroBatch(r, pack([samples[i] for i in r], self.pad_token_id,
                                             routing=self.cfg.use_routing_replay).to(self.device),
                                     adv[r].to(self.device)) for r in rows])
        return steps

    @torch.no_grad()
    def _fill_old_and_ref(self, steps: list[list[MicroBatch]], *, old: bool = True) -> None:
        for mb in (mb for step in steps for mb in step):
            if old:
                mb.old = self.forward_log_probs(self.model, mb.batch)
            if self.ref_model is not None:
                mb.ref = self.forward_log_probs(self.ref_model, mb.batch)

    def compute_log_probs(self, samples: list[Sample]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in samples]
        steps = self._split(samples)
        self._fill_old_and_ref(steps)
        for mb in (mb for step in steps for mb in step):
            for row, lp, n in zip(mb.rows, mb.old, mb.batch.response_mask.sum(1)):
                out[row] = lp[: int(n)].tolist()
        return out

    def _micro_loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, batch = self.cfg, mb.batch
        log_probs, entropy = self.forward_log_probs(self.model, batch, with_entropy=True)
        if mb.old is None:  # the batch's only optimizer step: the weights before it are these
            mb.old = log_probs.detach()
        token_advantages = mb.advantages[:, None].expand_as(log_probs)
        if mb.ref is not None and cfg.kl_coef:
            # KL in the reward: each token's advantage pays for its (k1) divergence from the reference
            token_advantages = token_advantages - cfg.kl_coef * (mb.old - mb.ref)
        loss, stats = policy_loss(
            log_probs, mb.old, token_advantages, batch.loss_mask,
            rollout_log_probs=batch.rollout_log_probs, eps_clip=cfg.eps_clip, eps_clip_high=cfg.eps_clip_high,
            tis_cap=cfg.tis_clip if cfg.use_tis else None, aggregation=cfg.loss_aggregation,
            eps_clip_c=cfg.eps_clip_c, tis_level=cfg.tis_level, tis_mode=cfg.tis_mode, tis_lower=cfg.tis_clip_low,
            tis_function=self.tis_function,
            kind=cfg.advantage_estimator if cfg.advantage_estimator in ("gspo", "cispo") else "ppo",
        )
        entropy_mean = aggregate(entropy, batch.loss_mask, cfg.loss_aggregation)
        stats["entropy"] = entropy_mean.detach()
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * entropy_mean
        if mb.ref is not None:
            kl = aggregate(kl_penalty(log_probs, mb.ref, cfg.kl_loss_type), batch.loss_mask, cfg.loss_aggregation)
            stats["kl_ref"] = kl.detach()
            if cfg.use_kl_loss:
                loss = loss + cfg.kl_loss_coef * kl
        return loss, stats

    def _weights(self, step: list[MicroBatch]) -> list[float]:
        """Each micro-batch's share of its global batch (tokens for token_mean, rows otherwise), over all ranks."""
        if self.cfg.loss_aggregation == "token_mean":
            weights = [float(mb.batch.loss_mask.sum()) for mb in step]
        else:
            weights = [float(mb.batch.loss_mask.shape[0]) for mb in step]
        total = self.all_reduce_stats({"total": sum(weights)})["total"]
        return [w / max(total, 1.0) for w in weights]

    def _accumulate(self, step: list[MicroBatch]) -> dict[str, float]:
        """Gradients of one global batch into the backend's gradient buffers; this rank's weighted stats."""
        sums: dict[str, float] = {}
        self.zero_grad()
        for mb, weight in zip(step, self._weights(step)):
            loss, stats = self._micro_loss(mb)
            (loss * weight * self.gradient_scale()).backward()
            for k, v in {"loss": loss.detach(), **stats}.items():
                if is_max_stat(k):
                    sums[k] = max(sums.get(k, float("-inf")), float(v))
                else:
                    sums[k] = sums.get(k, 0.0) + float(v) * weight
        return sums

    def train_step(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        """Old log-probs at the current weights (the proximal policy), then PPO steps of global-batch size.

        When the batch makes one optimizer step, every micro-batch's forward runs at the weights before it, so its
        detached log-probs are the old ones and the separate no-grad forward over the batch is skipped (a quarter of
        the step's model FLOPs); `--check-invariants` keeps that pass to check that the two agree."""
        self.set_train_mode()
        steps = self._split(samples, advantages)
        self._fill_old_and_ref(steps, old=len(steps) > 1 or self.cfg.check_invariants)
        totals: dict[str, float] = {}
        skipped = 0
        first_ratio_dev = 0.0
        for n, step in enumerate(steps):
            sums = self.all_reduce_stats(self._accumulate(step))
            if n == 0:  # the weights have not moved yet: new and old log-probs are the same policy
                first_ratio_dev = sums.get("ratio_max_abs_dev", 0.0)
            self.set_learning_rate(learning_rate(self.optimizer_steps, self.cfg, self.total_optimizer_steps))
            grad_norm, applied = self.optimizer_step()
            self.optimizer_steps += applied
            sums["grad_norm"] = grad_norm
            skipped += not applied
            for k, v in sums.items():
                totals[k] = max(totals.get(k, float("-inf")), v) if is_max_stat(k) else totals.get(k, 0.0) + v
        self.version += 1
        mbs = [mb for step in steps for mb in step]
        agreement: dict[str, float] = {}
        for mb in mbs:
            for k, v in mismatch_sums(mb.old, mb.batch.rollout_log_probs, mb.batch.loss_mask).items():
                agreement[k] = agreement.get(k, 0.0) + v
        agreement = self.all_reduce_stats(agreement)
        metrics = {f"train/{k}": v if is_max_stat(k) else v / len(steps)
                   for k, v in totals.items() if k != "ratio_max_abs_dev"}
        metrics["train/first_step_ratio_max_abs_dev"] = first_ratio_dev
        metrics["train/rollout_logprob_abs_diff"] = agreement["abs_diff"] / max(agreement["tokens"], 1.0)
        metrics |= mismatch_metrics(agreement)
        metrics["train/lr"] = self.learning_rate()
        metrics["train/skipped_steps"] = float(skipped)
        return metrics

    def probe(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        """Loss and gradient norm of the first global batch at the current weights; nothing is updated.

        Recorded with a checkpoint and recomputed after loading it: equal values show that the weights
        came back exactly.
        """
        self.set_train_mode()
        step = self._split(samples, advantages)[0]
        self._fill_old_and_ref([step])
        sums = self.all_reduce_stats(self._accumulate(step))
        grad_norm = self.gradient_norm()
        self.zero_grad()
        return {"loss": sums["loss"], "grad_norm": grad_norm}

    # ---- a batch handed over by reference (the driver's calls) --------------------------------------------
    def data_parallel_rank(self) -> int:
        return 0

    def train_sharded(self, batch: ShardedBatch) -> dict[str, float]:
        """`train_step` on this rank's shard, fetched from the object store."""
        return PolicyTrainer.train_step(self, *batch.fetch(self.data_parallel_rank()))

    def probe_sharded(self, batch: ShardedBatch) -> dict[str, float]:
        return PolicyTrainer.probe(self, *batch.fetch(self.data_parallel_rank()))

    def log_probs_sharded(self, batch: ShardedBatch) -> list[list[float]]:
        return PolicyTrainer.compute_log_probs(self, batch.fetch(self.data_parallel_rank())[0])

    def weight_buckets(self, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False) -> Iterator[NamedTensors]:
        """Weight-sync buckets on this process's device (FP8-quantized per bucket when the rollout is FP8)."""
        return weight_buckets(self.export_weights(), bucket_bytes=bucket_bytes, fp8=fp8, pow2_scale=pow2_scale)

    def weight_digests(self, bucket_bytes: int, fp8: str | None, pow2_scale: bool,
                       dtypes: dict[str, str]) -> dict[str, tuple[str, str]]:
        """What a push sends, digested as the engine holds it (`--check-weight-update-equal`)."""
        pushed = (named for bucket in self.weight_buckets(bucket_bytes, fp8, pow2_scale) for named in bucket)
        return digests_as(pushed, dtypes)

    def export_weight_buckets(self, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False):
        """The buckets as CPU copies, for Ray to stream to the engines through its object store."""
        yield from export_buckets(self.weight_buckets(bucket_bytes, fp8, pow2_scale))

    def connect_rollout_engines(self, engines: list[Any], ranks_per_engine: int, backend: str, single_machine: bool) -> None:
        """(Re)build the weight-broadcast group with these SGLang engine actors (`--update-weight-mode distributed`),
        listening on this node."""
        self.broadcaster.connect(engines, ranks_per_engine, backend, node_address(single_machine))

    def broadcast_weights(self, version: int, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False) -> None:
        """Push the current weights to the connected engines as `version`, bucket by bucket, device to device."""
        self.broadcaster.push(self.weight_buckets(bucket_bytes, fp8, pow2_scale), version)
