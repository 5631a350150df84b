"""`torch` trainer backend: a Hugging Face causal LM and AdamW on the CPU or one GPU."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Iterator

import torch
from transformers import AutoModelForCausalLM

from async_rl.backends.torch import HF_MODEL
from async_rl.config.sections import TrainConfig
from async_rl.routing_replay import replay_routing
from async_rl.trainer.batch import PackedBatch, response_log_probs
from async_rl.trainer.host_stash import HostStash
from async_rl.trainer.policy_trainer import PolicyTrainer, needs_reference, use_deterministic_kernels
from async_rl.weights.hf_layout import unstack_experts


class TorchOffloader:
    """The model (and reference model) and AdamW's state moved between the GPU and reused host buffers."""

    def __init__(self, models: list[torch.nn.Module], optimizer: torch.optim.Optimizer, device: torch.device):
        self.models, self.optimizer, self.device = models, optimizer, device
        self.stash = HostStash()

    def offload_optimizer(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.stash.offload_optimizer("optimizer", self.optimizer, params=False)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def offload_weights(self) -> None:
        self.offload_optimizer()
        for n, model in enumerate(self.models):
            self.stash.offload_params(("model", n), model.parameters())
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def onload(self) -> None:
        self.stash.onload(self.device)
        torch.cuda.synchronize()


class TorchTrainer(PolicyTrainer):
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
        max_tokens_per_micro_batch: int | None = None,
        total_optimizer_steps: int = 1,
    ):
        super().__init__(cfg, global_batch_size=global_batch_size, temperature=temperature,
                         max_tokens_per_micro_batch=max_tokens_per_micro_batch, total_optimizer_steps=total_optimizer_steps)
        if num_threads:
            torch.set_num_threads(num_threads)
        torch.manual_seed(seed)
        self.device = torch.device(device)
        use_deterministic_kernels(cfg, self.device.type == "cuda")
        self.load_tokenizer(hf_checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).to(self.device)
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False) if needs_reference(cfg) else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )

    def make_offloader(self) -> TorchOffloader:
        return TorchOffloader([m for m in (self.model, self.ref_model) if m is not None], self.optimizer, self.device)

    def forward_log_probs(self, model: torch.nn.Module, batch: PackedBatch, with_entropy: bool = False):
        replay = batch.routed_experts is not None and model is self.model  # the reference policy routes itself
        with replay_routing(model, batch.routed_experts.flatten(0, 1)) if replay else contextlib.nullcontext():
            return response_log_probs(model, batch, self.temperature, with_entropy=with_entropy)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _clip(self, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

    def gradient_norm(self) -> float:
        return float(self._clip(float("inf")))

    def optimizer_step(self) -> tuple[float, bool]:
        grad_norm = self._clip(self.cfg.clip_grad if self.cfg.clip_grad > 0 else float("inf"))
        if not torch.isfinite(grad_norm):  # a NaN/inf loss or gradient must not reach the weights
            self.zero_grad()
            return float(grad_norm), False
        self.optimizer.step()
        return float(grad_norm), True

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Checkpoint-layout names (MoE experts one by one), as engines load them: the parameters, and the buffers
        a checkpoint holds too (a router's score bias)."""
        saved = self.model.state_dict(keep_vars=True).keys()
        buffers = [(name, b) for name, b in self.model.named_buffers() if name in saved]
        return unstack_experts((name, t.detach()) for name, t in [*self.model.named_parameters(), *buffers])

    def save(self, path: str) -> None:
        """Hugging Face layout under `model/` plus optimizer and RNG state; the caller makes it atomic."""
        out = Path(path)
        self.model.save_pretrained(out / HF_MODEL, safe_serialization=True)
        self.tokenizer.save_pretrained(out / HF_MODEL)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "version": self.version, "optimizer_steps": self.optimizer_steps,
             "torch_rng": torch.get_rng_state()},
            out / "trainer_state.pt",
        )

    def load(self, path: str) -> None:
        src = Path(path)
        loaded = AutoModelForCausalLM.from_pretrained(src / HF_MODEL, dtype=torch.float32)
        self.model.load_state_dict(loaded.state_dict())
        state = torch.load(src / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.version, self.optimizer_steps = state["version"], state["optimizer_steps"]
        torch.set_rng_state(state["torch_rng"])
