"""The `megatron` trainer backend: megatron-core models built from a Hugging Face config (BF16, or FP8 through
Transformer Engine), one Ray actor per rank joined by torch.distributed, checkpoints in torch_dist."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from async_rl.config import Config
    from async_rl.sample import Sample


class MegatronBackend:
    name = "megatron"

    def check(self, cfg: Config) -> None:
        from async_rl.backends.megatron.checks import check_megatron

        check_megatron(cfg)

    def check_model(self, cfg: Config) -> None:
        from async_rl.backends.megatron.checks import check_megatron_model

        check_megatron_model(cfg)

    def check_resume(self, cfg: Config, checkpoint: Path) -> None:
        from async_rl.backends.megatron.checks import check_distributed_optimizer_resume

        if cfg.megatron.use_distributed_optimizer:
            check_distributed_optimizer_resume(cfg, checkpoint)

    def cpu_world_size(self, cfg: Config) -> int:
        """One rank per tensor-parallel shard, so that a CPU run exercises the sharded path."""
        return cfg.megatron.tensor_model_parallel_size

    def shard_rows(self, cfg: Config, samples: list[Sample]) -> list[list[int]]:
        from async_rl.backends.megatron.trainer import shard_rows

        m = cfg.megatron
        dp = cfg.trainer_world_size // m.tensor_model_parallel_size
        return shard_rows(samples, cfg.global_batch_size, dp, cfg.train.balance_data, m.expert_model_parallel_size)

    def create_trainer(self, cfg: Config, rank_options: list[dict[str, Any]], num_threads: int) -> Any:
        from async_rl.backends.megatron.actor_group import create_megatron_group

        return create_megatron_group(
            cfg.model.hf_checkpoint, cfg.train, cfg.megatron, rank_options=rank_options,
            global_batch_size=cfg.global_batch_size, temperature=cfg.rollout.rollout_temperature, seed=cfg.logging.seed,
            num_threads=num_threads, single_machine=cfg.cluster.ray_address is None,
            total_optimizer_steps=cfg.total_optimizer_steps,
        )

    def hf_model(self, checkpoint: Path) -> Path | None:
        """Its checkpoints hold torch_dist shards: converted to a Hugging Face model first."""
        if not (checkpoint / "megatron").is_dir():
            return None
        from async_rl.errors import UserInputError

        raise UserInputError(f"--load {checkpoint} is a megatron checkpoint: convert it first with "
                             f"tools/convert_torch_dist_to_hf.py --input-dir {checkpoint / 'megatron'} ...")

    def checkpoint_layout(self, checkpoint: Path) -> dict[str, int] | None:
        from async_rl.backends.megatron.trainer import recorded_layout

        return recorded_layout(checkpoint)

    def trains_in_bf16(self, cfg: Config) -> bool:
        return bool(cfg.megatron.bf16)
