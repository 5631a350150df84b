"""The rollout and trainer backends, registered under the names --rollout-backend and --train-backend take.

Each package builds its actors from the config, owns its start-up checks and says how its engines take work and
weights; the driver picks one with `rollout_backend(cfg)` / `train_backend(cfg)` and never compares names.
Importing this module imports no backend's heavy dependencies (SGLang, megatron-core): each backend imports
them when it checks or builds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from async_rl.backends.local import LocalBackend
from async_rl.backends.megatron import MegatronBackend
from async_rl.backends.protocols import RolloutBackend, TrainBackend
from async_rl.backends.sglang import SGLangBackend
from async_rl.backends.torch import TorchBackend

if TYPE_CHECKING:
    from async_rl.config import Config

ROLLOUT_BACKENDS: dict[str, RolloutBackend] = {b.name: b for b in (LocalBackend(), SGLangBackend())}
TRAIN_BACKENDS: dict[str, TrainBackend] = {b.name: b for b in (TorchBackend(), MegatronBackend())}


def rollout_backend(cfg: Config) -> RolloutBackend:
    return ROLLOUT_BACKENDS[cfg.backend.rollout_backend]


def train_backend(cfg: Config) -> TrainBackend:
    return TRAIN_BACKENDS[cfg.backend.train_backend]
