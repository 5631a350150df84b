"""What the megatron trainer needs before it starts: megatron-core (and Transformer Engine for its layers), a
model family it builds, and parallel sizes that fit the model and the batch."""

from __future__ import annotations

from pathlib import Path

import torch

from async_rl.config import Config
from async_rl.errors import GPU_INSTALL, UserInputError
from async_rl.weights.hf_layout import num_experts, read_hf_config


def check_megatron(cfg: Config) -> None:
    """megatron-core is installed, and the flags ask for what this backend drives on this machine."""
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        raise UserInputError(f"--train-backend megatron needs megatron-core: {GPU_INSTALL}") from None
    m = cfg.megatron
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
    dp = cfg.trainer_world_size // m.tensor_model_parallel_size
    if cfg.global_batch_size % dp:
        raise UserInputError(f"--global-batch-size {cfg.global_batch_size} must split over {dp} data-parallel ranks")


def check_megatron_model(cfg: Config) -> None:
    """The model family is one the backend builds, and the parallel sizes fit it."""
    from async_rl.backends.megatron.model import FAMILIES, SUPPORTED, mla_config, moe_config, rope_arguments

    hf = read_hf_config(cfg.model.hf_checkpoint)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise UserInputError(f"--hf-checkpoint {cfg.model.hf_checkpoint}: model_type {model_type!r} is not supported by "
                             f"--train-backend megatron yet (supported: {', '.join(SUPPORTED)})")
    try:  # what the model builder would refuse, said before anything starts
        mla_config(hf) if FAMILIES[model_type].multi_latent_attention else rope_arguments(hf)
        moe_config(hf)
    except ValueError as e:
        raise UserInputError(f"--hf-checkpoint {cfg.model.hf_checkpoint}: {e}") from None
    m = cfg.megatron
    if m.moe_grouped_gemm and not num_experts(hf):
        raise UserInputError(f"--moe-grouped-gemm applies to MoE models, not {model_type!r}")
    if num_experts(hf) and m.tensor_model_parallel_size > 1:
        # Megatron trains MoE layers under TP only with sequence parallelism, which needs TE or Apex norms
        raise UserInputError("--tensor-model-parallel-size > 1 with a MoE model needs --sequence-parallel, which "
                             "--train-backend megatron does not support yet: use --tensor-model-parallel-size 1")
    ep = m.expert_model_parallel_size
    if ep > 1:
        experts = num_experts(hf)
        if not experts or experts % ep:
            raise UserInputError(f"--expert-model-parallel-size {ep} must divide the model's experts ({experts or 'none'})")


def check_distributed_optimizer_resume(cfg: Config, checkpoint: Path) -> None:
    """Megatron's distributed optimizer checkpoints its state in its own gradient-buffer layout (`dp_reshardable`),
    which reshards across data-parallel ranks only: a tensor- or expert-parallel change would fail inside the load."""
    from async_rl.backends.megatron.trainer import recorded_layout

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
    from async_rl.backends.megatron.model import transformer_engine_importable

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
