"""`Sample`: one prompt and one response, carried from the dataset through rollout, reward and training."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class SampleStatus(str, Enum):
    PENDING = "pending"
    COMPLETED = "completed"  # stopped on EOS
    TRUNCATED = "truncated"  # hit the response-length limit
    ABORTED = "aborted"
    FAILED = "failed"


# A response that is over: engines leave such samples untouched when a chunk is continued (partial rollouts)
FINISHED_STATUSES = (SampleStatus.COMPLETED, SampleStatus.TRUNCATED)


@dataclass
class Sample:
    prompt: str
    prompt_tokens: list[int]
    label: str | None = None
    response: str = ""
    response_tokens: list[int] = field(default_factory=list)
    rollout_log_probs: list[float] = field(default_factory=list)  # per response token, from the engine
    loss_mask: list[int] = field(default_factory=list)  # per response token: 1 trains on it
    reward: float | dict | None = None  # a float, or a dict with a "score" key plus logged extras
    status: SampleStatus = SampleStatus.PENDING
    group_id: int = 0  # the samples of one prompt share a group_id
    index: int = 0  # position in the rollout batch
    weight_version: int = -1  # the policy version that generated the response
    # MoE routing replay: the engine's experts per position, [tokens - 1, layers, top_k] (async_rl.routing_replay)
    routed_experts: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the dataset row's other fields

    @property
    def response_length(self) -> int:
        return len(self.response_tokens)

    @property
    def tokens(self) -> list[int]:
        """Prompt and response tokens together (the name slime's reward plugins use)."""
        return self.prompt_tokens + self.response_tokens

    @property
    def score(self) -> float:
        """The scalar reward, whichever form the reward function returned."""
        if self.reward is None:
            raise ValueError(f"sample {self.index} (group {self.group_id}) has no reward yet")
        return float(self.reward["score"] if isinstance(self.reward, dict) else self.reward)
