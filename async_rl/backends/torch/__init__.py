"""The `torch` trainer backend: a Hugging Face model and AdamW in one process (a CPU, or one GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from async_rl.config import Config
    from async_rl.sample import Sample


HF_MODEL = "model"  # a checkpoint's Hugging Face model directory: `evaluate` and engines load it as it is


class TorchBackend:
    name = "torch"

    def check(self, cfg: Config) -> None:
        """Runs wherever torch runs."""

    def check_model(self, cfg: Config) -> None:
        """Any causal LM transformers can build."""

    def check_resume(self, cfg: Config, checkpoint: Path) -> None:
        """Its checkpoint is one state dict: it loads under any flags that build the same model."""

    def cpu_world_size(self, cfg: Config) -> int:
        return 1

    def shard_rows(self, cfg: Config, samples: list[Sample]) -> list[list[int]]:
        return [list(range(len(samples)))]

    def create_trainer(self, cfg: Config, rank_options: list[dict[str, Any]], num_threads: int) -> Any:
        import ray

        from async_rl.backends.torch.trainer import TorchTrainer

        options = rank_options[0]
        return ray.remote(TorchTrainer).options(**options).remote(
            cfg.model.hf_checkpoint, cfg.train, global_batch_size=cfg.global_batch_size,
            temperature=cfg.rollout.rollout_temperature, seed=cfg.logging.seed, num_threads=num_threads,
            device="cuda" if options["num_gpus"] else "cpu", total_optimizer_steps=cfg.total_optimizer_steps,
        )

    def hf_model(self, checkpoint: Path) -> Path | None:
        model = checkpoint / HF_MODEL
        return model if model.is_dir() else None

    def checkpoint_layout(self, checkpoint: Path) -> None:
        return None

    def trains_in_bf16(self, cfg: Config) -> bool:
        return False
