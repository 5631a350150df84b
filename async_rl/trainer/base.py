"""What every trainer backend provides; the orchestrator sees only this."""

from __future__ import annotations

from typing import Iterator, Protocol

import torch

from async_rl.sample import Sample


class Trainer(Protocol):
    def compute_log_probs(self, samples: list[Sample]) -> list[list[float]]:
        """Per-response-token log-probs of each sample under the current weights."""

    def train_step(self, samples: list[Sample], advantages: list[float]) -> dict[str, float]:
        """Recompute old log-probs, then one or more optimizer steps over the samples; returns metrics."""

    def export_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Policy weights under Hugging Face names."""

    def export_weight_buckets(self, bucket_bytes: int, fp8: str | None = None, pow2_scale: bool = False) -> Iterator[list]:
        """The weights in sync buckets, FP8-quantized (weight + scales, `fp8` the layout) when the rollout is FP8."""

    def save(self, path: str) -> None: ...

    def load(self, path: str) -> None: ...
