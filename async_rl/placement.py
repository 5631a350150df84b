"""Ray placement: start or join Ray, then create the trainer and rollout engine actors on their resources."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from async_rl.config import Config
from async_rl.errors import UserInputError
from async_rl.net import LOOPBACK, node_address
from async_rl.weights.fp8 import checkpoint_granularity, quantization_config
from async_rl.weights.hf_layout import num_experts

_WORKER_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def check_backends(cfg: Config) -> None:
    """Fail before anything starts when a backend cannot run here (missing package, no GPU, bad server flag)."""
    if cfg.cluster.colocate and cfg.cluster.rollout_num_gpus_per_engine > 1:  # an engine shares one trainer bundle
        raise UserInputError("--colocate with --rollout-num-gpus-per-engine > 1 is not supported yet")
    if cfg.backend.rollout_backend == "sglang":
        check_sglang(cfg)
    if cfg.backend.train_backend == "megatron":
        check_megatron(cfg)


def check_sglang(cfg: Config) -> None:
    try:
        from sglang.srt.server_args import ServerArgs
    except ImportError:
        raise UserInputError("--rollout-backend sglang needs SGLang: pip install 'async_rl[gpu]'") from None
    if cfg.cluster.actor_num_gpus_per_node == 0:
        raise UserInputError("--rollout-backend sglang runs on GPUs: set --actor-num-gpus-per-node")
    if cfg.num_rollout_engines < 1:
        raise UserInputError("--rollout-backend sglang needs at least one engine: set --rollout-num-gpus or --colocate")
    known = {f.name for f in dataclasses.fields(ServerArgs)}
    for name in cfg.sglang:
        if name not in known:
            raise UserInputError(f"--sglang-{name.replace('_', '-')}: SGLang has no server argument {name!r}")
    check_fp8_rollout(cfg)


def check_megatron(cfg: Config) -> None:
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        raise UserInputError("--train-backend megatron needs megatron-core: pip install 'async_rl[gpu]'") from None
    from async_rl.trainer.megatron.convert import read_hf_config
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
            raise UserInputError(f"{flag} needs Transformer Engine: pip install 'async_rl[gpu]'")
    if m.fp8_recipe == "mxfp8" and torch.cuda.is_available() and torch.cuda.get_device_capability() < (10, 0):
        raise UserInputError(f"--fp8-recipe mxfp8 needs a Blackwell GPU (compute capability 10+), not "
                             f"{torch.cuda.get_device_name()}: use tensorwise or delayed")


def _shares_trainer_gpus(cfg: Config) -> bool:
    """Engines colocated on the trainer's GPUs (on a CPU run there is no GPU to share)."""
    return bool(cfg.cluster.actor_num_gpus_per_node) and cfg.cluster.colocate


def _gpu_share(cfg: Config) -> float:
    """GPUs per actor: none on a CPU run, half a GPU each when trainer and engines are colocated."""
    if cfg.cluster.actor_num_gpus_per_node == 0:
        return 0
    return 0.5 if _shares_trainer_gpus(cfg) else 1


def _threads_per_process(cfg: Config) -> int:
    """Split the cores between the trainer and the engines, so that async overlap is real parallelism."""
    processes = cfg.trainer_world_size + cfg.num_rollout_engines
    return cfg.train.torch_num_threads or max(1, (os.cpu_count() or 1) // processes)


def start_ray(cfg: Config) -> None:
    """Join `--ray-address`, or start a Ray on this machine bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": _WORKER_ENV}
    if cfg.cluster.ray_address:
        ray.init(address=cfg.cluster.ray_address, runtime_env=runtime_env)
        return
    init_loopback_ray(num_cpus=cfg.trainer_world_size + cfg.num_rollout_engines, runtime_env=runtime_env,
                      log_to_driver=True)


def init_loopback_ray(**init_args: Any) -> None:
    """Start a Ray of our own that listens on 127.0.0.1 only.

    Asked for 127.0.0.1, Ray substitutes the machine's routable address and its servers listen on every
    interface, unless its cluster mode is off (the switch Ray reads as RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER).
    Turned off here for this process, where Ray resolves the node address, and for the processes it starts."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, **init_args)


def reserve_trainer_bundles(world_size: int, *, gpus: int, cpus: int = 1) -> PlacementGroup:
    """One bundle per trainer rank, packed onto nodes in rank order, so tensor-parallel neighbours share a node.

    A colocated engine goes into its rank's bundle (`engine_options`): Ray places fractional GPU
    requests of one bundle on that bundle's GPU, which is what makes trainer and engine share it."""
    bundle = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
    group = placement_group([bundle] * world_size, strategy="PACK")
    ray.get(group.ready())
    return group


def trainer_bundles(cfg: Config) -> PlacementGroup:
    """The trainer's bundles: a GPU each on GPUs, plus a CPU for the engine that shares it when colocated."""
    return reserve_trainer_bundles(cfg.trainer_world_size, gpus=int(bool(cfg.cluster.actor_num_gpus_per_node)),
                                   cpus=2 if _shares_trainer_gpus(cfg) else 1)


def in_bundle(bundles: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(bundles, placement_group_bundle_index=index)


def trainer_rank_options(cfg: Config, bundles: PlacementGroup, rank: int) -> dict[str, Any]:
    """Ray options of trainer rank `rank`: its bundle, and all of its GPU unless an engine shares it."""
    return {"num_cpus": 1, "num_gpus": _gpu_share(cfg), "scheduling_strategy": in_bundle(bundles, rank)}


def engine_options(cfg: Config, rank: int, bundles: PlacementGroup | None) -> dict[str, Any]:
    """Ray options of rollout engine `rank`: a GPU share of its own, or, colocated on GPUs, half of trainer rank
    `rank`'s bundle (one engine per trainer GPU: `--rollout-num-gpus-per-engine` is 1 when colocated)."""
    per_engine = cfg.cluster.rollout_num_gpus_per_engine
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": _gpu_share(cfg) if per_engine == 1 else per_engine}
    if bundles is not None and _shares_trainer_gpus(cfg):
        options["scheduling_strategy"] = in_bundle(bundles, rank)
    return options


def create_trainer(cfg: Config, bundles: PlacementGroup) -> Any:
    """The trainer actor the loop talks to (rank 0 of the megatron group), in the trainer's bundles."""
    if cfg.backend.train_backend == "megatron":
        from async_rl.trainer.megatron.actor_group import create_megatron_group

        return create_megatron_group(
            cfg.model.hf_checkpoint, cfg.train, cfg.megatron,
            rank_options=[trainer_rank_options(cfg, bundles, rank) for rank in range(cfg.trainer_world_size)],
            global_batch_size=cfg.global_batch_size,
            temperature=cfg.rollout.rollout_temperature, seed=cfg.logging.seed, num_threads=_threads_per_process(cfg),
            single_machine=cfg.cluster.ray_address is None,
        )
    from async_rl.trainer.torch_trainer import TorchTrainer

    options = trainer_rank_options(cfg, bundles, 0)
    actor = ray.remote(TorchTrainer).options(**options)
    return actor.remote(
        cfg.model.hf_checkpoint, cfg.train, global_batch_size=cfg.global_batch_size,
        temperature=cfg.rollout.rollout_temperature, seed=cfg.logging.seed,
        num_threads=_threads_per_process(cfg), device="cuda" if options["num_gpus"] else "cpu",
    )


def start_router(cfg: Config) -> Any:
    """sglang-router on this node when several SGLang engines serve the policy (they register with it), else None."""
    if cfg.backend.rollout_backend != "sglang" or cfg.num_rollout_engines < 2:
        return None
    from async_rl.rollout.sglang_router import SGLangRouter

    host = node_address(single_machine=cfg.cluster.ray_address is None)
    return SGLangRouter(host, cfg.rollout.router_port, cfg.rollout.router_policy)


def create_engine(cfg: Config, rank: int, router_url: str | None = None, bundles: PlacementGroup | None = None) -> Any:
    """Rollout engine `rank` as a Ray actor of its own (a process an operator can find by its class name); its
    calls run one at a time, in order, and `abort`, `health` and weight control use a thread of their own to
    reach a busy engine."""
    options = engine_options(cfg, rank, bundles)
    if cfg.backend.rollout_backend == "sglang":
        return _create_sglang_engine(cfg, rank, router_url, options)
    from async_rl.rollout.local_engine import LocalEngine

    return _engine_actor(LocalEngine).options(**options).remote(
        cfg.model.hf_checkpoint, seed=cfg.logging.seed + 1000 * (rank + 1), num_threads=_threads_per_process(cfg),
        device="cuda" if options["num_gpus"] else "cpu",
        fp8=cfg.rollout.fp8_layout,
    )


def _engine_actor(engine_class: type) -> Any:
    return ray.remote(max_concurrency=1, concurrency_groups={"control": 1})(engine_class)


def checkpoint_fp8_granularity(path: str) -> str | None:
    return checkpoint_granularity(json.loads((Path(path) / "config.json").read_text()))


def check_fp8_rollout(cfg: Config) -> None:
    """The FP8 layout must be the one an FP8 checkpoint holds, and one the engine can take weight pushes in."""
    config = json.loads((Path(cfg.model.hf_checkpoint) / "config.json").read_text())
    stored = checkpoint_granularity(config)
    if stored is not None and cfg.rollout.fp8_layout != stored:
        raise UserInputError(f"--hf-checkpoint {cfg.model.hf_checkpoint} holds {stored}-wise FP8 weights: run with "
                             f"--rollout-quantization fp8 --rollout-fp8-granularity {stored}")
    if cfg.rollout.fp8_layout == "channel" and num_experts(config):
        # SGLang's channel-FP8 MoE method rebuilds its expert parameters without their loaders after loading,
        # and our push loader only restores those of linear layers
        raise UserInputError("--rollout-fp8-granularity channel does not take weight pushes into MoE experts yet: "
                             "use --rollout-fp8-granularity block")


def needs_initial_weights(cfg: Config) -> bool:
    """An FP8 SGLang engine built from a BF16 checkpoint starts with dummy weights until the first push."""
    return (cfg.backend.rollout_backend == "sglang" and cfg.rollout.fp8_layout is not None
            and checkpoint_fp8_granularity(cfg.model.hf_checkpoint) is None)


def _create_sglang_engine(cfg: Config, rank: int, router_url: str | None, options: dict[str, Any]) -> Any:
    from async_rl.rollout.sglang_engine import SGLangEngine

    server_args = dict(cfg.sglang)
    if cfg.cluster.colocate:  # the engines release their memory during training steps
        server_args.setdefault("enable_memory_saver", True)
    if needs_initial_weights(cfg):
        # SGLang's online --quantization fp8 cannot take weight updates: build FP8 parameters of the chosen
        # layout instead, filled by the first weight push
        server_args |= {"load_format": "dummy",
                        "json_model_override_args": json.dumps({"quantization_config": quantization_config(cfg.rollout.fp8_layout)})}
    return _engine_actor(SGLangEngine).options(**options).remote(
        cfg.model.hf_checkpoint, seed=cfg.logging.seed + 1000 * (rank + 1), fp8=cfg.rollout.fp8_layout,
        host=LOOPBACK if cfg.cluster.ray_address is None else None,  # else the engine's node
        max_concurrent_requests=cfg.rollout.rollout_max_concurrency, router_url=router_url,
        tp_size=cfg.cluster.rollout_num_gpus_per_engine, **server_args,
    )
