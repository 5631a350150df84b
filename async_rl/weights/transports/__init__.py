"""How a weight push reaches the rollout engines, one module per transport, each with its trainer side, its engine
side and the driver's strategy; and how a replacement engine gets the weights the others hold.

`object_store.ObjectStoreSync` (every backend; `--update-weight-mode tensor` for SGLang): the trainer streams CPU
buckets through Ray's object store and each engine actor loads them (an SGLang engine hands them on to its
server through CUDA IPC); a bucket is freed once every engine has loaded it, so no second copy of the weights
stays in host memory.
`nccl_broadcast.BroadcastSync` (`--update-weight-mode distributed`): trainer rank 0 broadcasts device buckets to
every SGLang engine over a process group; the group is rebuilt with a replacement.
Either way a replacement engine is refilled from the trainer's current weights through the object store,
labelled with the last pushed version. In async runs a replacement made while the trainer steps may get the
step's newer weights under the older label: its samples then count as staler than they are, never fresher.
`CheckpointWeights` (standalone evaluation): no trainer; every engine serves the checkpoint it starts from.
"""

from __future__ import annotations

from typing import Any, Protocol

import ray

from async_rl.config import Config
from async_rl.weights.transports.nccl_broadcast import BroadcastSync
from async_rl.weights.transports.object_store import ObjectStoreSync


class WeightSync(Protocol):
    def connect(self, engines: list[Any]) -> None:
        """Called once the engines exist, and again after one was replaced."""

    def push(self, engines: list[Any], version: int) -> list[ray.ObjectRef]:
        """Start a push; the refs resolve once every engine holds `version` (and raise if a load failed)."""

    def restore(self, engines: list[Any], rank: int) -> None:
        """Give the fresh engine `rank` the weights the others hold."""


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
