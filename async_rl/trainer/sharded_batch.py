"""A training batch handed to the trainer by reference: one object-store entry per data-parallel shard.

The driver, which graded the samples, puts each shard into Ray's object store once. The call to trainer rank 0, and
rank 0's calls to its peers, carry these references and row indices only; each rank fetches its own shard. Rank 0
no longer receives the whole batch to send most of it on, the hop that grows with the rank count.
Ray is imported where it is used: the trainer modules load in tools that run without it (checkpoint converters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from async_rl.sample import Sample


@dataclass(frozen=True)
class ShardedBatch:
    shards: tuple[Any, ...]  # a ray.ObjectRef per data-parallel rank: (samples, advantages or None)
    rows: tuple[tuple[int, ...], ...]  # each shard's positions in the batch

    @classmethod
    def put(cls, samples: Sequence[Sample], advantages: Sequence[float] | None,
            rows: Sequence[Sequence[int]]) -> ShardedBatch:
        import ray

        def shard(part: Sequence[int]) -> tuple[list[Sample], list[float] | None]:
            return [samples[i] for i in part], None if advantages is None else [advantages[i] for i in part]

        return cls(tuple(ray.put(shard(part)) for part in rows), tuple(tuple(part) for part in rows))

    def fetch(self, data_parallel_rank: int) -> tuple[list[Sample], list[float] | None]:
        import ray

        return ray.get(self.shards[data_parallel_rank])

    def __len__(self) -> int:
        return sum(len(part) for part in self.rows)
