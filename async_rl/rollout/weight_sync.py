"""How a weight push reaches the rollout engines, and how a replacement engine gets the weights the others hold.

`ObjectStoreSync` (every backend; `--update-weight-mode tensor` for SGLang): the trainer streams CPU
buckets through Ray's object store and each engine actor loads them (an SGLang engine through CUDA IPC);
a bucket is freed once every engine has loaded it, so no second copy of the weights stays in host memory.
`BroadcastSync` (`--update-weight-mode distributed`): trainer rank 0 broadcasts device buckets to every
SGLang engine over a process group (`async_rl.weights.broadcast`); the group is rebuilt with a replacement.
Either way a replacement engine is refilled from the trainer's current weights through the object store,
labelled with the last pushed version. In async runs a replacement made while the trainer steps may get the
step's newer weights under the older label: its samples then count as staler than they are, never fresher.
`CheckpointWeights` (standalone evaluation): no trainer; every engine serves the checkpoint it starts from.
"""

from __future__ import annotations

from typing import Any, Protocol

import ray

from async_rl.config import Config


class WeightSync(Protocol):
    def connect(self, engines: list[Any]) -> None:
        """Called once the engines exist, and again after one was replaced."""

    def push(self, engines: list[Any], version: int) -> list[ray.ObjectRef]:
        """Start a push; the refs resolve once every engine holds `version` (and raise if a load failed)."""

    def restore(self, engines: list[Any], rank: int) -> None:
        """Give the fresh engine `rank` the weights the others hold."""


def stream_weights(trainer: Any, export_args: tuple, engines: list[Any], version: int) -> list[ray.ObjectRef]:
    """Queue each bucket on every engine as the trainer exports it (after the calls already queued there),
    then the version; returns the refs of the loads. A bucket lives until the last engine has loaded it."""
    loads = []
    for bucket in trainer.export_weight_buckets.options(num_returns="streaming").remote(*export_args):
        loads += [engine.load_weights.remote(bucket) for engine in engines]
    return loads + [engine.set_weight_version.remote(version) for engine in engines]


def refill(trainer: Any, export_args: tuple, engine: Any, version: int) -> None:
    """A replacement engine gets the trainer's current weights as `version`."""
    ray.get(stream_weights(trainer, export_args, [engine], version))


class ObjectStoreSync:
    def __init__(self, trainer: Any, export_args: tuple):
        self.trainer = trainer
        self.export_args = export_args  # bucket bytes, FP8 layout, power-of-two scales
        self.version = 0

    def connect(self, engines: list[Any]) -> None:
        return None

    def push(self, engines: list[Any], version: int) -> list[ray.ObjectRef]:
        self.version = version
        return stream_weights(self.trainer, self.export_args, engines, version)

    def restore(self, engines: list[Any], rank: int) -> None:
        refill(self.trainer, self.export_args, engines[rank], self.version)


class BroadcastSync:
    def __init__(self, trainer: Any, export_args: tuple, *, ranks_per_engine: int, backend: str, single_machine: bool):
        self.trainer = trainer
        self.export_args = export_args
        self.group_args = (ranks_per_engine, backend, single_machine)
        self.version = 0

    def connect(self, engines: list[Any]) -> None:
        ray.get(self.trainer.connect_rollout_engines.remote(engines, *self.group_args))

    def push(self, engines: list[Any], version: int) -> list[ray.ObjectRef]:
        self.version = version
        return [self.trainer.broadcast_weights.remote(version, *self.export_args)]

    def restore(self, engines: list[Any], rank: int) -> None:
        refill(self.trainer, self.export_args, engines[rank], self.version)
        self.connect(engines)


class CheckpointWeights:
    """No trainer (standalone evaluation): engines serve the checkpoint they start from, and so does a replacement."""

    def connect(self, engines: list[Any]) -> None:
        return None

    def push(self, engines: list[Any], version: int) -> list[ray.ObjectRef]:
        raise RuntimeError("no trainer to push weights from")

    def restore(self, engines: list[Any], rank: int) -> None:
        return None


def make_weight_sync(cfg: Config, trainer: Any) -> WeightSync:
    r = cfg.rollout
    export_args = (r.update_weight_buffer_size, r.fp8_layout, r.force_pow_2_scale)
    if cfg.weight_update_mode == "distributed":
        return BroadcastSync(trainer, export_args, ranks_per_engine=cfg.cluster.rollout_num_gpus_per_engine,
                             backend=r.update_weight_group_backend, single_machine=cfg.cluster.ray_address is None)
    return ObjectStoreSync(trainer, export_args)
