"""What the driver asks of a backend, and of the actors a backend builds; `tests/backends/test_protocols.py` holds
every registered backend and every driver call to these.

A backend object (`RolloutBackend`, `TrainBackend`) runs in the driver: it checks the flags and the machine
before anything starts and creates its actors. The actors (`RolloutEngine`, `Trainer`) run in Ray workers;
the driver reaches them only through the methods listed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence

import torch

from async_rl.rollout.engine import SamplingParams
from async_rl.sample import Sample
from async_rl.trainer.sharded_batch import ShardedBatch

if TYPE_CHECKING:
    from async_rl.config import Config


class RolloutBackend(Protocol):
    name: str
    # engines batch concurrent requests themselves (one call per group, all at once), or within one call (chunks)
    dispatch_per_group: bool
    weight_update_modes: tuple[str, ...]  # the --update-weight-mode values its engines take
    checks_weights: bool  # its engines implement `WeightDigests` (--check-weight-update-equal)

    def check(self, cfg: Config) -> None:
        """Raise UserInputError naming the flag when this backend cannot run here with these flags."""

    def check_model(self, cfg: Config) -> None:
        """Checks that read --hf-checkpoint's config.json (run only where it is readable)."""

    def needs_initial_weights(self, cfg: Config) -> bool:
        """Whether engines start without the policy's weights and wait for a first push."""

    def start_router(self, cfg: Config) -> Any:
        """A router in front of the engines, or None."""

    def create_engine(self, cfg: Config, rank: int, options: dict[str, Any], router_url: str | None) -> Any:
        """Engine actor `rank` with Ray `options` (resources, bundle); it implements `RolloutEngine`."""


class TrainBackend(Protocol):
    name: str

    def check(self, cfg: Config) -> None: ...

    def check_model(self, cfg: Config) -> None: ...

    def check_resume(self, cfg: Config, checkpoint: Path) -> None:
        """Whether `--load checkpoint` can resume under these flags."""

    def cpu_world_size(self, cfg: Config) -> int:
        """Trainer processes of a CPU run."""

    def shard_rows(self, cfg: Config, samples: list[Sample]) -> list[list[int]]:
        """Each data-parallel rank's sample positions in a training batch (the driver hands over one shard each)."""

    def create_trainer(self, cfg: Config, rank_options: list[dict[str, Any]], num_threads: int) -> Any:
        """The trainer actor the driver talks to (rank 0 of a group), one rank per entry of `rank_options`; it
        implements `Trainer`."""

    def hf_model(self, checkpoint: Path) -> Path | None:
        """The Hugging Face model directory of a checkpoint this backend wrote (None: not one of its checkpoints);
        UserInputError when its checkpoints hold none, naming the conversion."""

    def checkpoint_layout(self, checkpoint: Path) -> dict[str, int] | None:
        """The parallel layout a checkpoint of this backend was written under (None: one process)."""

    def trains_in_bf16(self, cfg: Config) -> bool: ...


class RolloutEngine(Protocol):
    """Calls run one at a time, in order; `abort`, `health` and `rng_state` also run on the engine's `control`
    thread, to reach a busy engine."""

    def generate(self, samples: list[Sample], params: SamplingParams, request_id: int | None = None) -> list[Sample]:
        """Fill in response tokens, text, per-token rollout log-probs, status and weight version."""

    def generate_custom(self, function_path: str, samples: list[Sample], params: SamplingParams,
                        request_id: int | None = None) -> list[Sample]:
        """Generate through a user's --custom-generate-function-path (multi-turn, tools)."""

    def abort(self, request_ids: Sequence[int]) -> None:
        """End the named generate calls early; their samples come back marked aborted."""

    def load_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Load one bucket of policy weights (Hugging Face names; FP8 pairs for an FP8 engine)."""

    def set_weight_version(self, version: int) -> None:
        """Adopt the version of the weights loaded since the last call."""

    def rng_state(self) -> torch.Tensor:
        """The sampling RNG state, saved with checkpoints so that a resumed run samples what the original would."""

    def load_rng_state(self, state: torch.Tensor) -> None: ...

    def pause(self) -> None:
        """Release device memory (colocated sync runs) until `resume`."""

    def resume(self) -> None: ...

    def health(self) -> dict: ...

    def shutdown(self) -> None: ...


class WeightDigests(Protocol):
    """Engines of a backend with `checks_weights`: what they hold, for --check-weight-update-equal."""

    def weight_digests(self) -> dict[str, tuple[str, str]]:
        """Checkpoint-layout name -> (dtype, digest) of every tensor the engine holds (`async_rl.weights.checksums`)."""


class Trainer(Protocol):
    """Batches come by reference (`ShardedBatch`): every rank fetches its own shard from the object store."""

    def train_sharded(self, batch: ShardedBatch) -> dict[str, float]:
        """Recompute old log-probs, then one or more optimizer steps over the batch; returns metrics."""

    def log_probs_sharded(self, batch: ShardedBatch) -> list[list[float]]: ...

    def probe_sharded(self, batch: ShardedBatch) -> dict[str, float]:
        """Loss and gradient norm of a batch at the current weights, without a step (`--check-invariants`)."""

    def export_weight_buckets(self, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False) -> Iterator[list]:
        """The weights in sync buckets (a Ray streaming generator), FP8 pairs when the rollout is FP8."""

    def connect_rollout_engines(self, engines: list[Any], ranks_per_engine: int, backend: str, single_machine: bool) -> None:
        """Join the engines' weight-broadcast group (`--update-weight-mode distributed`)."""

    def broadcast_weights(self, version: int, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False) -> None: ...

    def weight_digests(self, bucket_bytes: int, fp8: str | None, pow2_scale: bool,
                       dtypes: dict[str, str]) -> dict[str, tuple[str, str]]:
        """Digests of what a push sends, each tensor cast to the dtype `dtypes` says the engine holds it in."""

    def offload(self, weights: bool) -> dict[str, float]: ...

    def onload(self) -> dict[str, float]: ...

    def parallel_layout(self) -> dict[str, int]: ...

    def save(self, path: str) -> None: ...

    def load(self, path: str) -> None: ...
