"""Weights through Ray's object store: the trainer exports CPU copies bucket by bucket, Ray streams each to every
engine actor, and each engine loads it (`--update-weight-mode tensor`, and every CPU run).

float8 storage does not survive pickling, so FP8 payloads travel as their raw bytes (`to_transport`) and are
viewed back as float8 by the engine (`from_transport`).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import ray
import torch

from async_rl.weights.sync import NamedTensors


def to_transport(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy that survives pickling: float8 storage does not, so it travels as its raw bytes."""
    tensor = tensor.detach().to("cpu", copy=True)
    return tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor


def from_transport(tensor: torch.Tensor, target_dtype: torch.dtype) -> torch.Tensor:
    """Undo `to_transport` for a tensor headed for a float8 destination."""
    if target_dtype == torch.float8_e4m3fn and tensor.dtype == torch.uint8:
        return tensor.view(torch.float8_e4m3fn)
    return tensor


def export_buckets(buckets: Iterable[NamedTensors]) -> Iterator[NamedTensors]:
    """Trainer side: each bucket as CPU copies that survive pickling, for Ray to stream."""
    for bucket in buckets:
        yield [(name, to_transport(t)) for name, t in bucket]


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
    """The driver's strategy: each bucket the trainer exports is queued on every engine actor (`stream_weights`)."""

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
