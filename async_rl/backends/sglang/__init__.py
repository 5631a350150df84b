"""The `sglang` rollout backend: one SGLang server per engine actor, behind sglang-router when there are several;
FP8 engines built from a BF16 checkpoint start empty and are filled by the first weight push."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from async_rl.weights.fp8 import checkpoint_granularity, quantization_config
from async_rl.weights.hf_layout import read_hf_config

if TYPE_CHECKING:
    from async_rl.config import Config


class SGLangBackend:
    name = "sglang"
    dispatch_per_group = True  # the server batches concurrent requests continuously: a call per group, all at once
    weight_update_modes = ("tensor", "distributed")
    checks_weights = False  # the server reports no digests of its parameters yet

    def check(self, cfg: Config) -> None:
        from async_rl.backends.sglang.checks import check_sglang

        check_sglang(cfg)

    def check_model(self, cfg: Config) -> None:
        """What weight pushes into an FP8 engine need from the checkpoint (checked without SGLang installed)."""
        from async_rl.backends.sglang.checks import check_fp8_rollout

        check_fp8_rollout(cfg)

    def needs_initial_weights(self, cfg: Config) -> bool:
        """An FP8 engine built from a BF16 checkpoint starts with dummy weights until the first push."""
        return cfg.rollout.fp8_layout is not None and checkpoint_granularity(read_hf_config(cfg.model.hf_checkpoint)) is None

    def start_router(self, cfg: Config) -> Any:
        """sglang-router on this node when several engines serve the policy (they register with it)."""
        if cfg.num_rollout_engines < 2:
            return None
        from async_rl.backends.sglang.router import SGLangRouter
        from async_rl.net import node_address

        host = node_address(single_machine=cfg.cluster.ray_address is None)
        return SGLangRouter(host, cfg.rollout.router_port, cfg.rollout.router_policy)

    def create_engine(self, cfg: Config, rank: int, options: dict[str, Any], router_url: str | None) -> Any:
        from async_rl.backends.sglang.engine import SGLangEngine
        from async_rl.net import LOOPBACK
        from async_rl.placement import engine_actor, engine_seed

        return engine_actor(SGLangEngine, concurrent_generates=cfg.rollout.rollout_max_concurrency).options(**options).remote(
            cfg.model.hf_checkpoint, seed=engine_seed(cfg, rank), fp8=cfg.rollout.fp8_layout,
            host=LOOPBACK if cfg.cluster.ray_address is None else None,  # else the engine's node
            max_concurrent_requests=cfg.rollout.rollout_max_concurrency, router_url=router_url,
            return_routed_experts=cfg.train.use_routing_replay,
            tp_size=cfg.cluster.rollout_num_gpus_per_engine, **self.server_args(cfg),
        )

    def server_args(self, cfg: Config) -> dict[str, Any]:
        """The --sglang-* flags, and what the run itself asks of the server."""
        args = dict(cfg.sglang)
        if cfg.cluster.colocate and not cfg.async_mode:  # the sync loop's engines release their memory for each step
            args.setdefault("enable_memory_saver", True)
        if cfg.train.use_routing_replay:
            args["enable_return_routed_experts"] = True
        if self.needs_initial_weights(cfg):
            # SGLang's online --quantization fp8 cannot take weight updates: build FP8 parameters of the chosen
            # layout instead, filled by the first weight push
            args |= {"load_format": "dummy",
                     "json_model_override_args": json.dumps({"quantization_config": quantization_config(cfg.rollout.fp8_layout)})}
        return args
