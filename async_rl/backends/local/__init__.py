"""The `local` rollout backend: a PyTorch generator in the engine actor, on a CPU or a GPU, with FP8 emulated in
its linear layers. It stands where SGLang stands in production, behind the same `RolloutEngine` calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from async_rl.errors import UserInputError
from async_rl.weights.hf_layout import num_experts, read_hf_config

if TYPE_CHECKING:
    from async_rl.config import Config


class LocalBackend:
    name = "local"
    dispatch_per_group = False  # one call samples a whole chunk of groups as one batch
    weight_update_modes = ("tensor",)
    checks_weights = True

    def check(self, cfg: Config) -> None:
        """Runs wherever torch runs: nothing to check before the model is read."""

    def check_model(self, cfg: Config) -> None:
        """FP8 is emulated in linear layers only: FP8 weight pushes into MoE experts would not load."""
        if cfg.rollout.fp8_layout and num_experts(read_hf_config(cfg.model.hf_checkpoint)):
            raise UserInputError("--rollout-quantization fp8 with --rollout-backend local does not emulate FP8 MoE "
                                 "experts: use --rollout-quantization none or --rollout-backend sglang")

    def needs_initial_weights(self, cfg: Config) -> bool:
        return False

    def start_router(self, cfg: Config) -> None:
        return None

    def create_engine(self, cfg: Config, rank: int, options: dict[str, Any], router_url: str | None) -> Any:
        from async_rl.backends.local.engine import LocalEngine
        from async_rl.placement import engine_actor, engine_seed, threads_per_process

        return engine_actor(LocalEngine).options(**options).remote(
            cfg.model.hf_checkpoint, seed=engine_seed(cfg, rank), num_threads=threads_per_process(cfg),
            device="cuda" if options["num_gpus"] else "cpu",
            fp8=cfg.rollout.fp8_layout, record_routing=cfg.train.use_routing_replay,
        )
