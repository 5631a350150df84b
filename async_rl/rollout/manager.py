"""RolloutManager: turns prompt rows into graded sample groups using whatever engines it is given."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import ray
from tqdm import tqdm

from async_rl.data.prompt_dataset import PromptRow
from async_rl.rollout.engine import FINISHED_AT, SamplingParams
from async_rl.sample import Sample


@dataclass
class PendingRollout:
    """Generation in flight on the engines: chunks of whole groups and the refs that will hold them."""

    refs: list[ray.ObjectRef]
    n_samples: int
    description: str
    submitted_at: float


class RolloutManager:
    def __init__(self, engines: Sequence[Any], reward_fn: Callable[[Sample], float | dict], *, chunks_per_engine: int = 2):
        self.engines = list(engines)
        self.reward_fn = reward_fn
        self.chunks_per_engine = chunks_per_engine
        self._next_group_id = 0

    def make_groups(self, rows: Sequence[PromptRow], n_samples: int) -> list[list[Sample]]:
        groups = []
        for row in rows:
            group_id = self._next_group_id
            self._next_group_id += 1
            groups.append([
                Sample(prompt=row.prompt, prompt_tokens=list(row.prompt_tokens), label=row.label,
                       group_id=group_id, metadata=dict(row.metadata))
                for _ in range(n_samples)
            ])
        return groups

    def submit(self, rows: Sequence[PromptRow], n_samples: int, params: SamplingParams, description: str = "rollout") -> PendingRollout:
        """Send every group to an engine, round-robin in chunks of whole groups; returns at once."""
        groups = self.make_groups(rows, n_samples)
        n_chunks = min(len(groups), len(self.engines) * self.chunks_per_engine)
        chunks = [[s for g in groups[i::n_chunks] for s in g] for i in range(n_chunks)]
        refs = [self.engines[i % len(self.engines)].generate.remote(chunk, params) for i, chunk in enumerate(chunks)]
        return PendingRollout(refs, len(rows) * n_samples, description, time.time())

    def collect(self, pending: PendingRollout) -> tuple[list[Sample], dict[str, float]]:
        """Wait for a submitted rollout (with a progress bar) and grade it.

        Returns the samples, grouped and indexed, and timings: `perf/rollout_time_s` from submission to the
        last response, as the engines saw it, and `perf/rollout_wait_s`, how long this call blocked.
        """
        wait_start = time.time()
        done: list[Sample] = []
        remaining = list(pending.refs)
        with tqdm(total=pending.n_samples, desc=pending.description, leave=False, disable=None) as bar:
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                chunk = ray.get(ready[0])
                done.extend(chunk)
                bar.update(len(chunk))
        timings = {
            "perf/rollout_time_s": max(s.metadata[FINISHED_AT] for s in done) - pending.submitted_at,
            "perf/rollout_wait_s": time.time() - wait_start,
        }
        done.sort(key=lambda s: s.group_id)
        for i, sample in enumerate(done):
            sample.index = i
            sample.reward = self._grade(sample)
        return done, timings

    def _grade(self, sample: Sample) -> float | dict:
        result = self.reward_fn(sample)
        if not isinstance(result, (int, float, dict)) or isinstance(result, dict) and "score" not in result:
            raise TypeError(f"reward function returned {result!r} for sample {sample.index}; expected a float or a dict with 'score'")
        return result

    def update_weights(self, weights_ref: ray.ObjectRef, version: int) -> list[ray.ObjectRef]:
        """Queue the new weights on every engine; each applies them after the generate calls already queued."""
        return [engine.update_weights.remote(weights_ref, version) for engine in self.engines]
