"""The optimizer of the megatron backend: Megatron's own on GPUs, AdamW over Megatron's gradient buffers on a CPU.

Megatron's optimizer wrappers allocate their bookkeeping tensors on "cuda" unconditionally, so a CPU run
(tests, small experiments) uses torch's AdamW with the same hyperparameters. Both read the gradients that
Megatron's DistributedDataParallel accumulates in each parameter's `main_grad` (already reduced over
data-parallel ranks), and both skip a step whose gradient norm is not finite.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from async_rl.config.sections import MegatronConfig, TrainConfig


def start_adam_state(adam: torch.optim.Optimizer) -> None:
    """Give every parameter without Adam state the state Adam starts from (zero moments at step 0), so that a
    sharded description of the state exists before the first step."""
    for group in adam.param_groups:
        for p in group["params"]:
            if not adam.state[p]:
                adam.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}


class _Wrapped:
    """The learning rate of the wrapped optimizer (`inner`)."""

    inner: Any

    @property
    def lr(self) -> float:
        return self.inner.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.inner.param_groups:
            group["lr"] = lr


class MegatronAdam(_Wrapped):
    """Megatron's Adam (mixed precision with FP32 main weights under --bf16, distributed optimizer if asked)."""

    def __init__(self, ddp_model, cfg: TrainConfig, mcfg: MegatronConfig):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        self.clip = cfg.clip_grad
        self.distributed = mcfg.use_distributed_optimizer
        self.inner = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=cfg.lr, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1,
                            adam_beta2=cfg.adam_beta2, clip_grad=cfg.clip_grad, bf16=mcfg.bf16,
                            params_dtype=torch.bfloat16 if mcfg.bf16 else torch.float32,
                            use_distributed_optimizer=mcfg.use_distributed_optimizer),
            [ddp_model],
        )

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        """Megatron's own sharded optimizer state. The distributed optimizer's shards go in Megatron-LM's default
        layout, `dp_reshardable` (megatron-core 0.19's own default, `fully_sharded_model_space`, fails to build)."""
        if is_loading and self.distributed:
            self._start_torch_adam_state()
        return self.inner.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading,
                                             metadata={"distrib_optim_sharding_type": "dp_reshardable"})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
        if self.distributed:
            self._restore_torch_adam_steps()

    def _start_torch_adam_state(self) -> None:
        """Zero moments at step 0 for a fresh distributed optimizer over torch's Adam (no Transformer Engine or
        Apex): megatron-core reads every parameter's 'step' to describe that state and fails on an empty one.
        The checkpoint being loaded overwrites the moments; the steps are restored after it."""
        for adam in self._torch_adams():
            start_adam_state(adam)

    def _restore_torch_adam_steps(self) -> None:
        """Each parameter's Adam step from the loaded parameter groups. megatron-core's load puts one shared step
        tensor in every parameter's state (torch's Adam would then advance it once per parameter per step) and
        copies the placeholder step of `_start_torch_adam_state` into it."""
        for adam in self._torch_adams():
            for group in adam.param_groups:
                for p in group["params"]:
                    adam.state[p]["step"] = torch.tensor(float(group["step"]))

    def _torch_adams(self) -> list[torch.optim.Optimizer]:
        """The torch Adam optimizers inside Megatron's wrappers (none when it uses Transformer Engine's or Apex's)."""
        wrappers = getattr(self.inner, "chained_optimizers", [self.inner])
        return [w.optimizer for w in wrappers if isinstance(w.optimizer, (torch.optim.Adam, torch.optim.AdamW))]

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def grad_norm(self) -> float:
        self.inner.prepare_grads()
        return float(self.inner.get_grad_norm())

    def step(self) -> tuple[float, bool]:
        found_inf = self.inner.prepare_grads()
        norm = float(self.inner.clip_grad_norm(self.clip) if self.clip > 0 else self.inner.get_grad_norm())
        if found_inf or not math.isfinite(norm):
            return norm, False
        self.inner.step_with_ready_grads()
        return norm, True


class CpuAdamW(_Wrapped):
    """torch AdamW on this rank's parameters; the norm counts each tensor-parallel duplicate once and each
    expert on the rank that holds it."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = cfg.clip_grad
        self.inner = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                       weight_decay=cfg.weight_decay)

    def zero_grad(self) -> None:
        self.inner.zero_grad(set_to_none=True)

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        """AdamW's moments as torch_dist tensors sharded like the weights they belong to, so that a checkpoint
        written under one tensor- or expert-parallel layout loads under another, as Megatron's optimizers do.
        The step, the same for every parameter, goes with each parameter group."""
        from megatron.core.dist_checkpointing.optimizer import get_param_id_to_sharded_param_map, optim_state_to_sharding_state

        start_adam_state(self.inner)  # a fresh AdamW has no state to describe or load into
        state = self.inner.state_dict()
        for group in state["param_groups"]:
            group["step"] = float(state["state"][group["params"][0]]["step"]) if group["params"] else 0.0
        optim_state_to_sharding_state(state, get_param_id_to_sharded_param_map(model_sharded_state_dict, self.params),
                                      exclude_keys=("step",))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for group in state["param_groups"]:  # AdamW wants the step in every parameter's state
            step = group.pop("step", None)  # none in a CPU checkpoint written before the state was sharded
            for param_id in group["params"] if step is not None else ():
                state["state"][param_id]["step"] = torch.tensor(step)
        self.inner.load_state_dict(state)

    def grad_norm(self) -> float:
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel.layers import param_is_not_tensor_parallel_duplicate

        dense, experts = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for p in self.params:
            if param_is_not_tensor_parallel_duplicate(p):
                part = p.main_grad.double().square().sum()
                if getattr(p, "allreduce", True):
                    dense += part
                else:  # an expert of this rank: the other expert-parallel ranks hold the others
                    experts += part
        dist.all_reduce(experts, group=parallel_state.get_expert_model_parallel_group())
        square = dense + experts
        dist.all_reduce(square, group=parallel_state.get_model_parallel_group())
        return math.sqrt(float(square))

    def step(self) -> tuple[float, bool]:
        norm = self.grad_norm()
        if not math.isfinite(norm):
            return norm, False
        scale = min(1.0, self.clip / (norm + 1e-6)) if self.clip > 0 else 1.0
        for p in self.params:
            p.grad = p.main_grad.view_as(p) * scale
        self.inner.step()
        return norm, True


def build_optimizer(ddp_model, cfg: TrainConfig, mcfg: MegatronConfig):
    return MegatronAdam(ddp_model, cfg, mcfg) if torch.cuda.is_available() else CpuAdamW(ddp_model, cfg)
