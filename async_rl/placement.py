"""Ray placement: start or join Ray, then create the trainer and rollout engine actors on their resources."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from async_rl.backends import rollout_backend, train_backend
from async_rl.config import Config
from async_rl.errors import UserInputError
from async_rl.net import LOOPBACK
from async_rl.placement_plan import plan_placement
from async_rl.rollout.engine import GENERATE_GROUP

logger = logging.getLogger(__name__)

_WORKER_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Idle OpenMP threads sleep instead of spinning: a spinning pool takes the cores that the other processes of
    # the run (and other jobs) need; on 2 cores that made a second job slow the tiny model's SFT 4x instead of 1.5x
    "OMP_WAIT_POLICY": "PASSIVE",
}


def _shares_trainer_gpus(cfg: Config) -> bool:
    """Engines colocated on the trainer's GPUs (on a CPU run there is no GPU to share)."""
    return bool(cfg.cluster.actor_num_gpus_per_node) and cfg.cluster.colocate


def _gpu_share(cfg: Config) -> float:
    """GPUs per actor: none on a CPU run, half a GPU each when trainer and engines are colocated."""
    if cfg.cluster.actor_num_gpus_per_node == 0:
        return 0
    return 0.5 if _shares_trainer_gpus(cfg) else 1


def threads_per_process(cfg: Config) -> int:
    """Split the cores between the trainer and the engines, so that async overlap is real parallelism."""
    processes = cfg.trainer_world_size + cfg.num_rollout_engines
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cfg.train.torch_num_threads or max(1, cores // processes)


def start_ray(cfg: Config) -> None:
    """Join `--ray-address`, or start a Ray on this machine bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    if not sys.stdout.isatty():  # Ray colours its worker-log prefixes; a redirected log gets them plain
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    runtime_env = {"env_vars": _WORKER_ENV}
    if cfg.cluster.ray_address:
        ray.init(address=cfg.cluster.ray_address, runtime_env=runtime_env)
        return
    init_loopback_ray(num_cpus=cfg.trainer_world_size + cfg.num_rollout_engines, runtime_env=runtime_env,
                      log_to_driver=True)


def check_training_gpus(cfg: Config) -> None:
    """A Ray of our own has every GPU it will ever have: a training plan that needs more fails now, naming the flags,
    instead of waiting for resources that cannot appear (a joined cluster may still be scaling up)."""
    if cfg.cluster.ray_address is None:
        check_gpus_here(cfg, ray.cluster_resources().get("GPU", 0))


def check_gpus_here(cfg: Config, available: float) -> None:
    needed = len(plan_placement(cfg).roles)  # the GPUs the plan puts anything on
    if needed > available:
        c = cfg.cluster
        asked = f"--actor-num-nodes {c.actor_num_nodes} x --actor-num-gpus-per-node {c.actor_num_gpus_per_node}"
        if not c.colocate:
            asked += f" + --rollout-num-gpus {c.rollout_num_gpus}"
        raise UserInputError(f"the run needs {needed} GPU(s) ({asked}) but this machine has {int(available)}: "
                             "lower those flags, join a cluster with --ray-address, or run on CPUs with "
                             "--actor-num-gpus-per-node 0")


def init_loopback_ray(**init_args: Any) -> None:
    """Start a Ray of our own that listens on 127.0.0.1 only.

    Asked for 127.0.0.1, Ray substitutes the machine's routable address and its servers listen on every
    interface, unless its cluster mode is off (the switch Ray reads as RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER).
    Turned off here for this process, where Ray resolves the node address, and for the processes it starts.

    Ray's servers join this process's group, where plain `timeout` or a scheduler sends its SIGTERM too: they start
    with SIGTERM blocked (as Ray blocks SIGINT in them), so that the driver's stop handler can finish the step and
    `ray.shutdown()` end them. Worker processes unblock it again as they start (`unblock_sigterm`)."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    runtime_env = dict(init_args.pop("runtime_env", None) or {}, worker_process_setup_hook=f"{__name__}.unblock_sigterm")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, runtime_env=runtime_env, **init_args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def unblock_sigterm() -> None:
    """Ray's worker processes (the actors, in process groups of their own) inherit the servers' blocked SIGTERM;
    they take it back, so that the SGLang servers they start still stop on their SIGTERM."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def reserve_trainer_bundles(world_size: int, *, gpus: int, cpus: int = 1) -> PlacementGroup:
    """One bundle per trainer rank, packed onto nodes in rank order, so tensor-parallel neighbours share a node.

    A colocated engine goes into its rank's bundle (`engine_options`): Ray places fractional GPU
    requests of one bundle on that bundle's GPU, which is what makes trainer and engine share it."""
    bundle = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
    group = placement_group([bundle] * world_size, strategy="PACK")
    ready = group.ready()
    while not ray.wait([ready], timeout=60)[0]:
        logger.warning("waiting for Ray to place the trainer's %d bundle(s) of %s; available in the cluster now: %s",
                       world_size, bundle, ray.available_resources())
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
    """The trainer actor the loop talks to (rank 0 of a group), in the trainer's bundles."""
    rank_options = [trainer_rank_options(cfg, bundles, rank) for rank in range(cfg.trainer_world_size)]
    return train_backend(cfg).create_trainer(cfg, rank_options, threads_per_process(cfg))


def create_engine(cfg: Config, rank: int, router_url: str | None = None, bundles: PlacementGroup | None = None) -> Any:
    """Rollout engine `rank` as a Ray actor of its own (a process an operator can find by its class name)."""
    return rollout_backend(cfg).create_engine(cfg, rank, engine_options(cfg, rank, bundles), router_url)


def engine_seed(cfg: Config, rank: int) -> int:
    """Each engine samples from a stream of its own."""
    return cfg.logging.seed + 1000 * (rank + 1)


def engine_actor(engine_class: type, concurrent_generates: int = 0) -> Any:
    """Calls run one at a time, in order (weight pushes after the generate calls queued before them); `control`
    (`abort`, `health`, `rng_state`) has a thread of its own to reach a busy engine, and with
    `concurrent_generates`, so do that many generate calls at once (an engine that batches them itself)."""
    groups = {"control": 1} | ({GENERATE_GROUP: concurrent_generates} if concurrent_generates else {})
    return ray.remote(max_concurrency=1, concurrency_groups=groups)(engine_class)
