"""What an SGLang rollout needs before it starts: SGLang itself, GPUs, server flags SGLang knows, and an FP8
checkpoint whose layout weight pushes can fill."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from async_rl.config import Config
from async_rl.errors import GPU_INSTALL, UserInputError
from async_rl.weights.fp8 import checkpoint_granularity, is_fp8_quantizable, scale_name
from async_rl.weights.hf_layout import num_experts, read_hf_config


def check_sglang(cfg: Config) -> None:
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError:
        raise UserInputError(f"--rollout-backend sglang needs SGLang: {GPU_INSTALL}") from None
    if cfg.cluster.actor_num_gpus_per_node == 0:
        raise UserInputError("--rollout-backend sglang runs on GPUs: set --actor-num-gpus-per-node")
    if cfg.num_rollout_engines < 1:
        raise UserInputError("--rollout-backend sglang needs at least one engine: set --rollout-num-gpus or --colocate")
    known = {f.name for f in dataclasses.fields(ServerArgs)}
    for name in cfg.sglang:
        if name not in known:
            raise UserInputError(f"--sglang-{name.replace('_', '-')}: SGLang has no server argument {name!r}")


def check_fp8_rollout(cfg: Config) -> None:
    """The FP8 layout must be the one an FP8 checkpoint holds, and one the engine can take weight pushes in."""
    config = read_hf_config(cfg.model.hf_checkpoint)
    stored = checkpoint_granularity(config)
    if stored is not None and cfg.rollout.fp8_layout != stored:
        raise UserInputError(f"--hf-checkpoint {cfg.model.hf_checkpoint} holds {stored}-wise FP8 weights: run with "
                             f"--rollout-quantization fp8 --rollout-fp8-granularity {stored}")
    if cfg.rollout.fp8_layout == "channel" and num_experts(config):
        # SGLang's channel-FP8 MoE method rebuilds its expert parameters without their loaders after loading,
        # and our push loader only restores those of linear layers
        raise UserInputError("--rollout-fp8-granularity channel does not take weight pushes into MoE experts yet: "
                             "use --rollout-fp8-granularity block")
    if stored is not None:
        check_fp8_layers(cfg.model.hf_checkpoint, stored)


def check_fp8_layers(checkpoint: str, granularity: str) -> None:
    """The FP8 checkpoint's FP8 weights are exactly the ones a weight push quantizes. Elsewhere a push would send
    FP8 bytes to a weight the engine holds in BF16 (or the reverse), which SGLang loads without a word."""
    from safetensors import safe_open

    shapes = {}
    for file in Path(checkpoint).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            shapes |= {name: f.get_slice(name).get_shape() for name in f.keys()}
    pushed_fp8 = {n for n, shape in shapes.items() if is_fp8_quantizable(n, torch.empty(shape, device="meta"))}
    stored_fp8 = {n for n in shapes if scale_name(n, granularity) in shapes}
    differences = [f"{n} (BF16 in the checkpoint, FP8 in a push)" for n in sorted(pushed_fp8 - stored_fp8)]
    differences += [f"{n} (FP8 in the checkpoint, BF16 in a push)" for n in sorted(stored_fp8 - pushed_fp8)]
    if differences:
        raise UserInputError(f"--hf-checkpoint {checkpoint}: {len(differences)} weights are quantized differently than "
                             f"weight pushes quantize them, e.g. {differences[0]}; write the checkpoint with "
                             "tools/bf16_cast_fp8.py for the engine's tensor-parallel size without ignored layers, or "
                             "start from the BF16 checkpoint")
