"""Whether the chosen backends can run here and take these flags: said before anything starts.

Each check raises `UserInputError` with one line naming the flag; `startup_checks` runs them all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from async_rl.config import Config
from async_rl.errors import UserInputError
from async_rl.weights.fp8 import checkpoint_granularity, is_fp8_quantizable, scale_name
from async_rl.weights.hf_layout import num_experts, read_hf_config

# from a checkout (the project is installed from its source directory); the extra names the GPU packages
GPU_INSTALL = "pip install -e '.[gpu]' in the async_rl directory"


def check_backends(cfg: Config) -> None:
    """Fail before anything starts when a backend cannot run here (missing package, no GPU, bad server flag)."""
    check_colocated_engines(cfg)
    if cfg.backend.rollout_backend == "sglang":
        check_sglang(cfg)
    if cfg.backend.train_backend == "megatron":
        check_megatron(cfg)


def check_colocated_engines(cfg: Config) -> None:
    if cfg.cluster.colocate and cfg.cluster.rollout_num_gpus_per_engine > 1:  # an engine shares one trainer bundle
        raise UserInputError("--colocate with --rollout-num-gpus-per-engine > 1 is not supported yet")


def check_local_engine(cfg: Config) -> None:
    """The local engine emulates FP8 in linear layers only: FP8 weight pushes into MoE experts would not load."""
    config = read_hf_config(cfg.model.hf_checkpoint)
    if cfg.rollout.fp8_layout and num_experts(config):
        raise UserInputError("--rollout-quantization fp8 with --rollout-backend local does not emulate FP8 MoE experts: "
                             "use --rollout-quantization none or --rollout-backend sglang")


def check_routing_replay(cfg: Config) -> None:
    """Routing replay needs a MoE model."""
    config = read_hf_config(cfg.model.hf_checkpoint)
    if not num_experts(config):
        raise UserInputError(f"--use-routing-replay applies to MoE models; {cfg.model.hf_checkpoint} has no experts")


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


def check_megatron(cfg: Config) -> None:
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        raise UserInputError(f"--train-backend megatron needs megatron-core: {GPU_INSTALL}") from None
    from async_rl.trainer.megatron.model import SUPPORTED, moe_config, rope_arguments

    hf = read_hf_config(cfg.model.hf_checkpoint)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise UserInputError(f"--hf-checkpoint {cfg.model.hf_checkpoint}: model_type {model_type!r} is not supported by "
                             f"--train-backend megatron yet (supported: {', '.join(SUPPORTED)})")
    try:  # what the model builder would refuse, said before anything starts
        rope_arguments(hf)
        if model_type == "qwen3_moe":
            moe_config(hf)
    except ValueError as e:
        raise UserInputError(f"--hf-checkpoint {cfg.model.hf_checkpoint}: {e}") from None
    m = cfg.megatron
    if m.moe_grouped_gemm and model_type != "qwen3_moe":
        raise UserInputError(f"--moe-grouped-gemm applies to MoE models, not {model_type!r}")
    unsupported = {  # not driven by this backend yet; docs/megatron.md says why for each
        "--pipeline-model-parallel-size": m.pipeline_model_parallel_size > 1,
        "--context-parallel-size": m.context_parallel_size > 1,
        "--sequence-parallel": m.sequence_parallel,
    }
    for flag, used in unsupported.items():
        if used:
            raise UserInputError(f"{flag} is not supported by --train-backend megatron yet")
    check_transformer_engine(cfg)
    if m.use_distributed_optimizer and cfg.cluster.actor_num_gpus_per_node == 0:
        raise UserInputError("--use-distributed-optimizer needs GPUs: on a CPU the megatron backend steps with torch's "
                             "AdamW, which expects whole gradients")
    if m.bf16 and cfg.cluster.actor_num_gpus_per_node == 0:
        raise UserInputError("--bf16 with --train-backend megatron needs GPUs: on a CPU it trains in FP32 (torch's AdamW "
                             "has no FP32 main weights there to step BF16 parameters with)")
    if m.recompute_granularity and cfg.cluster.actor_num_gpus_per_node == 0:
        raise UserInputError("--recompute-granularity needs GPUs: Megatron's recomputation saves and restores the CUDA "
                             "RNG state")
    if model_type == "qwen3_moe" and m.tensor_model_parallel_size > 1:
        # Megatron trains MoE layers under TP only with sequence parallelism, which needs TE or Apex norms
        raise UserInputError("--tensor-model-parallel-size > 1 with a MoE model needs --sequence-parallel, which "
                             "--train-backend megatron does not support yet: use --tensor-model-parallel-size 1")
    ep = m.expert_model_parallel_size
    if ep > 1:
        experts = num_experts(hf)
        if not experts or experts % ep:
            raise UserInputError(f"--expert-model-parallel-size {ep} must divide the model's experts ({experts or 'none'})")
    dp = cfg.trainer_world_size // m.tensor_model_parallel_size
    if cfg.global_batch_size % dp:
        raise UserInputError(f"--global-batch-size {cfg.global_batch_size} must split over {dp} data-parallel ranks")


def check_distributed_optimizer_resume(cfg: Config, checkpoint: Path) -> None:
    """Megatron's distributed optimizer checkpoints its state in its own gradient-buffer layout (`dp_reshardable`),
    which reshards across data-parallel ranks only: a tensor- or expert-parallel change would fail inside the load."""
    from async_rl.trainer.megatron.trainer import recorded_layout

    written = recorded_layout(checkpoint)
    m = cfg.megatron
    now = {"tensor": m.tensor_model_parallel_size, "expert": m.expert_model_parallel_size}
    flags = {"tensor": "--tensor-model-parallel-size", "expert": "--expert-model-parallel-size"}
    changed = [f"{flags[k]} {written[k]} (now {now[k]})" for k in now if written and written[k] != now[k]]
    if changed:
        raise UserInputError(f"--load {checkpoint}: written under {', '.join(changed)}; with --use-distributed-optimizer "
                             "the optimizer state reshards across data-parallel ranks only: resume under the "
                             "checkpoint's sizes")


def check_transformer_engine(cfg: Config) -> None:
    """What needs Transformer Engine's layers has GPUs and TE; an FP8 recipe this GPU cannot run is refused."""
    from async_rl.trainer.megatron.model import transformer_engine_importable

    m = cfg.megatron
    wanted = {"--transformer-impl transformer_engine": m.transformer_impl == "transformer_engine",
              "--fp8-format": m.fp8_format is not None, "--moe-grouped-gemm": m.moe_grouped_gemm}
    for flag, used in wanted.items():
        if not used:
            continue
        if cfg.cluster.actor_num_gpus_per_node == 0:
            raise UserInputError(f"{flag} runs Transformer Engine's layers, which need GPUs: set --actor-num-gpus-per-node")
        if not transformer_engine_importable():
            raise UserInputError(f"{flag} needs Transformer Engine: {GPU_INSTALL}")
    if m.fp8_recipe == "mxfp8" and torch.cuda.is_available() and torch.cuda.get_device_capability() < (10, 0):
        raise UserInputError(f"--fp8-recipe mxfp8 needs a Blackwell GPU (compute capability 10+), not "
                             f"{torch.cuda.get_device_name()}: use tensorwise or delayed")


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
