"""`torch` trainer backend: a Hugging Face causal LM and AdamW on the CPU or one GPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from async_rl.algorithms.losses import aggregate, kl_penalty, policy_loss
from async_rl.config.sections import TrainConfig
from async_rl.sample import Sample
from async_rl.trainer.batch import PackedBatch, pack, response_log_probs
from async_rl.weights.sync import to_transport, weight_buckets


def _is_max(stat: str) -> bool:
    """Stats named *_max* are maxima over the batch; the others are means."""
    return "_max" in stat


class TorchTrainer:
    def __init__(
        self,
        hf_checkpoint: str,
        cfg: TrainConfig,
        *,
        global_batch_size: int,
        temperature: float,
        seed: int = 0,
        num_threads: int | None = None,
        device: str = "cpu",
    ):
        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.global_batch_size = global_batch_size
        self.temperature = temperature
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint)
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.model = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).to(self.device)
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        self.version = 0

    def _micro_batches(self, samples: list[Sample]) -> list[PackedBatch]:
        size = self.cfg.micro_batch_size
        return [pack(samples[i : i + size], self.pad_token_id).to(self.device) for i in range(0, len(samples), size)]

    @torch.no_grad()
    def _log_probs_of(self, model: torch.nn.Module, micro_batches: list[PackedBatch]) -> list[torch.Tensor]:
        return [response_log_probs(model, mb, self.temperature) for mb in micro_batches]

    def compute_log_probs(self, samples: list[Sample]) -> list[list[float]]:
        out = []
        micro_batches = self._micro_batches(samples)
        for mb, lp in zip(micro_batches, self._log_probs_of(self.model, micro_batches)):
            out.extend(row[: int(n)].tolist() for row, n in zip(lp, mb.response_mask.sum(1)))
        return out

    def _micro_loss(self, mb: PackedBatch, old: torch.Tensor, ref: torch.Tensor | None, advantages: torch.Tensor):
        cfg = self.cfg
        log_probs, entropy = response_log_probs(self.model, mb, self.temperature, with_entropy=True)
        token_advantages = advantages[:, None].expand_as(log_probs)
        if ref is not None and not cfg.use_kl_loss:
            # KL in the reward: each token's advantage pays for its (k1) divergence from the reference
            token_advantages = token_advantages - cfg.kl_coef * (old - ref)
        loss, stats = policy_loss(
            log_probs, old, token_advantages, mb.loss_mask,
            rollout_log_probs=mb.rollout_log_probs, eps_clip=cfg.eps_clip, eps_clip_high=cfg.eps_clip_high,
            tis_cap=cfg.tis_clip if cfg.use_tis else None, aggregation=cfg.loss_aggregation,
            eps_clip_c=cfg.eps_clip_c, tis_level=cfg.tis_level, tis_mode=cfg.tis_mode, tis_lower=cfg.tis_clip_low,
        )
        entropy_mean = aggregate(entropy, mb.loss_mask, cfg.loss_aggregation)
        stats["entropy"] = entropy_mean.detach()
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * entropy_mean
        if ref is not None:
            kl = aggregate(kl_penalty(log_probs, ref, cfg.kl_loss_type), mb.loss_mask, cfg.loss_aggregation)
            stats["kl_ref"] = kl.detach()
            if cfg.use_kl_loss:
                loss = loss + cfg.kl_coef * kl
        return loss, stats

    def _prepare(self, samples: list[Sample], advantages: list[float]):
        micro_batches = self._micro_batches(samples)
        old = self._log_probs_of(self.model, micro_batches)
        ref = self._log_probs_of(self.ref_model, micro_batches) if self.ref_model is not None else [None] * len(old)
        adv = torch.tensor(advantages, dtype=torch.float32, device=self.device).split(self.cfg.micro_batch_size)
        return micro_batches, old, ref, adv

    def _accumulate(self, micro_batches, old, ref, adv, idx: range, sums: dict[str, float]) -> torch.Tensor:
        """Gradients of one global batch (micro-batches `idx`) into `.grad`; returns the (pre-clip) grad norm."""
        # Each micro-batch's mean is re-weighted so that the sum equals the mean over the whole global batch.
        if self.cfg.loss_aggregation == "token_mean":
            weights = [float(micro_batches[i].loss_mask.sum()) for i in idx]
        else:
            weights = [float(micro_batches[i].loss_mask.shape[0]) for i in idx]
        total = max(sum(weights), 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        for i, weight in zip(idx, weights):
            loss, stats = self._micro_loss(micro_batches[i], old[i], ref[i], adv[i])
            (loss * weight / total).backward()
            for k, v in {"loss": loss.detach(), **stats}.items():
                if _is_max(k):
                    sums[k] = max(sums.get(k, float("-inf")), float(v))
                else:
                    sums[k] = sums.get(k, 0.0) + float(v) * weight / total
        clip = self.cfg.clip_grad if self.cfg.clip_grad > 0 else float("inf")
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def train_step(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        """Old log-probs at the current weights (the proximal policy), then PPO steps of global-batch size."""
        self.model.train()
        micro_batches, old, ref, adv = self._prepare(samples, advantages)
        per_step = self.global_batch_size // self.cfg.micro_batch_size
        sums: dict[str, float] = {}
        n_steps = skipped = 0
        first_ratio_dev = 0.0
        for start in range(0, len(micro_batches), per_step):
            idx = range(start, min(start + per_step, len(micro_batches)))
            grad_norm = self._accumulate(micro_batches, old, ref, adv, idx, sums)
            if n_steps == 0:  # the weights have not moved yet: new and old log-probs are the same policy
                first_ratio_dev = sums.get("ratio_max_abs_dev", 0.0)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            n_steps += 1
            if torch.isfinite(grad_norm):
                self.optimizer.step()
            else:  # a NaN/inf loss or gradient must not reach the weights
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
        self.version += 1
        mask_total = sum(float(mb.loss_mask.sum()) for mb in micro_batches)
        abs_diff = sum(float(((o - mb.rollout_log_probs).abs() * mb.loss_mask).sum()) for o, mb in zip(old, micro_batches))
        metrics = {f"train/{k}": v if _is_max(k) else v / n_steps for k, v in sums.items() if k != "ratio_max_abs_dev"}
        metrics["train/first_step_ratio_max_abs_dev"] = first_ratio_dev
        metrics["train/rollout_logprob_abs_diff"] = abs_diff / max(mask_total, 1.0)
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train/skipped_steps"] = float(skipped)
        return metrics

    def probe(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        """Loss and gradient norm of the first global batch at the current weights; nothing is updated.

        Recorded with a checkpoint and recomputed after loading it: equal values show that the weights
        came back exactly.
        """
        self.model.train()
        micro_batches, old, ref, adv = self._prepare(samples, advantages)
        sums: dict[str, float] = {}
        idx = range(min(self.global_batch_size // self.cfg.micro_batch_size, len(micro_batches)))
        grad_norm = self._accumulate(micro_batches, old, ref, adv, idx, sums)
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": sums["loss"], "grad_norm": float(grad_norm)}

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        return ((name, p.detach()) for name, p in self.model.named_parameters())

    def export_weight_buckets(self, bucket_bytes: int, fp8: bool = False, pow2_scale: bool = False):
        """Yield weight-sync buckets (quantized on this device when the rollout is FP8); Ray streams them."""
        for bucket in weight_buckets(self.export_weights(), bucket_bytes=bucket_bytes, fp8=fp8, pow2_scale=pow2_scale):
            yield [(name, to_transport(t)) for name, t in bucket]

    def save(self, path: str) -> None:
        """Hugging Face layout under `model/` plus optimizer and RNG state; the caller makes it atomic."""
        out = Path(path)
        self.model.save_pretrained(out / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "model")
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "version": self.version, "torch_rng": torch.get_rng_state()},
            out / "trainer_state.pt",
        )

    def load(self, path: str) -> None:
        src = Path(path)
        loaded = AutoModelForCausalLM.from_pretrained(src / "model", dtype=torch.float32)
        self.model.load_state_dict(loaded.state_dict())
        state = torch.load(src / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = state["version"]
        torch.set_rng_state(state["torch_rng"])
