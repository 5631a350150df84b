"""Disaggregated weight sync: trainer rank 0 broadcasts weight buckets to SGLang engines over a process group.

The group is SGLang's weight-update group: the trainer is rank 0 and every engine's tensor-parallel ranks
follow (`/init_weights_update_group`). A bucket travels as one flat byte tensor in SGLang's
`FlattenedTensorBucket` layout (`load_format="flattened_bucket"`), so float8 weights, their float32 scales
and high-precision tensors share one broadcast, over NCCL or gloo alike. Engines pause generation around a
push: running requests are retracted, keep their tokens, and continue with the new weights.

An engine that dies during a broadcast fails the push (a collective cannot finish without it); one that
dies at any other time is replaced by the engine pool, which then rebuilds the group.

Trainer side: `WeightBroadcaster` (rank 0 of the trainer); driver side: `BroadcastSync`; engine side: the SGLang
engine's `init_weight_update_group` / `receive_weights`, which hand the group to its server.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import ray
import torch

from async_rl.net import free_port
from async_rl.weights.sync import NamedTensors
from async_rl.weights.transports.object_store import refill

_CONTROL = {"concurrency_group": "control"}  # engine calls that must not queue behind its generate calls


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class WeightBroadcaster:
    """Rank 0 of the weight-update group, living in the trainer process that holds the exported weights."""

    def __init__(self) -> None:
        self.engines: list[Any] = []
        self.group: Any = None
        self.group_name = ""
        self._generation = itertools.count()  # each rebuilt group gets a fresh name

    def connect(self, engines: list[Any], ranks_per_engine: int, backend: str, host: str) -> None:
        """(Re)build the group with `engines` (Ray actor handles); an old group is torn down first."""
        from sglang.srt.utils import init_custom_process_group

        self.disconnect()
        port = free_port(host)
        world_size = 1 + len(engines) * ranks_per_engine
        self.group_name = f"async_rl_weights_{next(self._generation)}"
        joins = [engine.init_weight_update_group.options(**_CONTROL).remote(
            host, port, 1 + i * ranks_per_engine, world_size, self.group_name, backend) for i, engine in enumerate(engines)]
        self.group = init_custom_process_group(backend=backend, init_method=f"tcp://{host}:{port}",
                                               world_size=world_size, rank=0, group_name=self.group_name)
        ray.get(joins)
        self.engines = list(engines)

    def disconnect(self) -> None:
        """Leave the group; engines still alive leave it too (a dead one's membership died with it)."""
        if self.group is None:
            return
        leaves = [engine.destroy_weight_update_group.options(**_CONTROL).remote(self.group_name) for engine in self.engines]
        torch.distributed.destroy_process_group(self.group)
        self.group, self.engines = None, []
        for ref in leaves:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                pass

    def push(self, buckets: Iterable[NamedTensors], version: int) -> None:
        """Broadcast every bucket (tensors on this process's device), then set the engines' weight version."""
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

        if self.group is None:
            raise RuntimeError("no weight-update group: connect() the engines first")
        ray.get([engine.pause_generation.options(**_CONTROL).remote() for engine in self.engines])
        try:
            for bucket in buckets:
                names = [name for name, _ in bucket]
                dtypes = [_dtype_name(t.dtype) for _, t in bucket]
                shapes = [list(t.shape) for _, t in bucket]
                loads = [engine.receive_weights.options(**_CONTROL).remote(names, dtypes, shapes, self.group_name)
                         for engine in self.engines]
                flat = FlattenedTensorBucket(named_tensors=[(n, t.contiguous()) for n, t in bucket]).get_flattened_tensor()
                torch.distributed.broadcast(flat, src=0, group=self.group)
                ray.get(loads)
            ray.get([engine.set_weight_version.options(**_CONTROL).remote(version) for engine in self.engines])
        finally:
            ray.get([engine.continue_generation.options(**_CONTROL).remote() for engine in self.engines])


class BroadcastSync:
    """The driver's strategy: the trainer broadcasts each push itself; a replacement engine is refilled through
    the object store, then the group is rebuilt with it."""

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
