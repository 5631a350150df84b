"""What every rollout backend provides; the manager and orchestrator see only this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from async_rl.sample import Sample

# Engines stamp each sample's metadata with the wall-clock time its generation finished, so the manager
# can report how long generation took even when the driver was busy elsewhere (async mode).
FINISHED_AT = "rollout_finished_at"
GENERATE_GROUP = "generate"  # an engine actor's concurrency group for generate calls that run at once
ROW_MAX_NEW_TOKENS = "max_new_tokens"  # a prompt row's own response budget, below --rollout-max-response-len


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_context_len: int | None = None  # prompt + response tokens (--rollout-max-context-len)
    stop_token_ids: tuple[int, ...] = ()  # besides EOS: a turn of a custom generate function may end at a tool call
    top_k: int = -1  # -1: no top-k truncation

    def remaining_tokens(self, sample: Sample) -> int:
        """New tokens `sample` may still generate: its response budget, within the context length. A prompt row may
        lower the budget for its own responses with a `max_new_tokens` field (e.g. by difficulty)."""
        limit = min(self.max_new_tokens, int(sample.metadata.get(ROW_MAX_NEW_TOKENS, self.max_new_tokens)))
        if self.max_context_len is not None:
            limit = min(limit, self.max_context_len - len(sample.prompt_tokens))
        return max(0, limit - sample.response_length)


class RolloutEngine(Protocol):
    def generate(self, samples: list[Sample], params: SamplingParams) -> list[Sample]:
        """Fill in response tokens, text, per-token rollout log-probs, status and weight version."""

    def load_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Load one bucket of policy weights (Hugging Face names; FP8 pairs for an FP8 engine)."""

    def set_weight_version(self, version: int) -> None:
        """Adopt the version of the weights loaded since the last call."""

    def update_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]], version: int) -> None:
        """`load_weights` then `set_weight_version`."""

    def rng_state(self) -> torch.Tensor:
        """The sampling RNG state, saved with checkpoints so that a resumed run samples what the original would."""

    def load_rng_state(self, state: torch.Tensor) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def health(self) -> dict: ...

    def shutdown(self) -> None: ...


class WeightVersionMixin:
    """The part of the interface every engine implements alike: the version it reports, and load-then-version."""

    weight_version: int = 0

    def set_weight_version(self, version: int) -> None:
        self.weight_version = version

    def update_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]], version: int) -> None:
        self.load_weights(named_tensors)
        self.set_weight_version(version)
