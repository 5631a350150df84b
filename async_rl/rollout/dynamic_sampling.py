"""DAPO's dynamic sampling: which finished groups a batch keeps, and how many groups a round requests."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

from async_rl.rollout.filters import GroupFilter
from async_rl.sample import Sample


class KeepRate:
    """The fraction of recently generated groups that passed the dynamic-sampling filter (1 until one finishes)."""

    def __init__(self, window: int):
        self._kept: deque[bool] = deque(maxlen=window)

    def add(self, kept: bool) -> None:
        self._kept.append(kept)

    @property
    def value(self) -> float:
        return sum(self._kept) / len(self._kept) if self._kept else 1.0


@dataclass(frozen=True)
class DynamicSampling:
    """How a training batch is filled: request groups in rounds until enough pass the filter.

    Fixed rounds (slime's rule) request `groups_per_round` groups each. Adaptive rounds (`--adaptive-over-sampling`)
    divide what is missing by the filter's recent keep rate, keeping the user's over-sampling ratio as the margin:
    once a filter keeps less than the ratio anticipates (DAPO's does as the model learns), fixed rounds need a second
    round of generation latency for most batches, adaptive ones rarely do."""

    group_filter: GroupFilter | None
    groups_per_round: int  # --over-sampling-batch-size (the batch size itself without over-sampling)
    max_rounds: int
    keep_rate: KeepRate | None = field(default=None, compare=False)  # set: adaptive rounds
    margin: float = 1.0  # adaptive rounds: --over-sampling-batch-size / --rollout-batch-size

    def round_size(self, missing: int) -> int:
        """Groups to request for a round while `missing` groups of the batch have not passed yet; at least a fixed
        round, at most what all fixed rounds together would request."""
        if self.keep_rate is None:
            return self.groups_per_round
        most = self.max_rounds * self.groups_per_round
        rate = self.keep_rate.value
        if rate == 0:
            return most
        expected = math.ceil(missing * self.margin / rate)
        return min(max(self.groups_per_round, expected), most)

    def observe(self, kept: bool) -> None:
        if self.keep_rate is not None:
            self.keep_rate.add(kept)

    def judge_chunk(self, chunk: list[Sample], counts: Counter) -> list[tuple[list[Sample], bool]]:
        """Each graded group of a finished chunk, and whether it passes (observed by the keep rate). The one filter
        step both loops take."""
        judged = [(group, self.judge(group, counts)) for group in split_groups(chunk)]
        for _, passed in judged:
            self.observe(passed)
        return judged

    def judge(self, group: list[Sample], counts: Counter) -> bool:
        """Whether a finished, graded group passes the filter; counts it as generated and, if dropped, why."""
        counts["groups_generated"] += 1
        result = self.group_filter(group) if self.group_filter else None
        if result is not None and not result.keep:
            counts[f"filter_drop_{result.reason}"] += 1
            return False
        return True


def split_groups(chunk: list[Sample]) -> list[list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for s in chunk:
        groups.setdefault(s.group_id, []).append(s)
    return list(groups.values())
