"""BatchAssembler: prompt rows in, graded sample groups out, on an `EnginePool`.

The sync loop fills a training batch in dynamic-sampling rounds (`generate_batch`); evaluation submits and
collects whole sets. Groups are graded as their engine call finishes, outside any lock; the async loop's
`RolloutProducer` uses the same group making, grading and filter step.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from typing import Callable, Iterator, Sequence

import ray
from tqdm import tqdm

from async_rl.data.prompt_dataset import PromptRow
from async_rl.rollout.dynamic_sampling import DynamicSampling
from async_rl.rollout.engine import FINISHED_AT, SamplingParams
from async_rl.rollout.engine_pool import EnginePool, PendingRollout
from async_rl.sample import Sample
from rewards.grading import RewardGrader

logger = logging.getLogger(__name__)


class BatchAssembler:
    def __init__(self, pool: EnginePool, grader: RewardGrader):
        self.pool = pool
        self.grader = grader
        self._group_ids = itertools.count()  # thread-safe: eval and the async producer both make groups

    def start_group_ids_at(self, first: int) -> None:
        """Continue group numbering after a resume, so restored groups keep ids no new group takes."""
        self._group_ids = itertools.count(first)

    def make_groups(self, rows: Sequence[PromptRow], n_samples: int) -> list[list[Sample]]:
        groups = []
        for row in rows:
            group_id = next(self._group_ids)
            groups.append([
                Sample(prompt=row.prompt, prompt_tokens=list(row.prompt_tokens), label=row.label,
                       group_id=group_id, metadata=dict(row.metadata))
                for _ in range(n_samples)
            ])
        return groups

    def submit(self, rows: Sequence[PromptRow], n_samples: int, params: SamplingParams, description: str = "rollout") -> PendingRollout:
        """Generate `n_samples` responses to each row; returns at once."""
        return self.pool.send(self.make_groups(rows, n_samples), params, description)

    def grade(self, chunk: list[Sample], reward_counts: Counter) -> None:
        """Reward every sample of a finished chunk in place; timeouts and errors are added to `reward_counts`."""
        for position, sample in enumerate(chunk):
            sample.index = position
        rewards, counts = self.grader.grade(chunk)
        for sample, reward in zip(chunk, rewards):
            sample.reward = reward
        reward_counts.update(counts)

    def _graded_chunks(self, pending: PendingRollout, reward_counts: Counter) -> Iterator[tuple[list[Sample], list[ray.ObjectRef]]]:
        """Each call's graded samples as it completes, with a progress bar; grading failures go to `reward_counts`."""
        with tqdm(total=pending.n_samples, desc=pending.description, leave=False, disable=None) as bar:
            for chunk, remaining in self.pool.finished(pending):
                self.grade(chunk, reward_counts)
                bar.update(len(chunk))
                yield chunk, remaining

    def collect(self, pending: PendingRollout) -> tuple[list[Sample], dict[str, float]]:
        """Wait for a submitted rollout and grade it.

        Returns the samples, grouped and indexed, and timings: `perf/rollout_time_s` from submission to the
        last response, as the engines saw it, and `perf/rollout_wait_s`, how long this call blocked.
        """
        wait_start, restarts_before = time.time(), self.pool.restarts
        reward_counts: Counter = Counter()
        done = [s for chunk, _ in self._graded_chunks(pending, reward_counts) for s in chunk]
        metrics = {
            "perf/rollout_time_s": max(s.metadata[FINISHED_AT] for s in done) - pending.submitted_at,
            "perf/rollout_wait_s": time.time() - wait_start,
            "rollout/engine_restarts": float(self.pool.restarts - restarts_before),
        }
        return indexed(done), metrics | reward_failure_metrics(reward_counts)

    def generate_batch(
        self,
        next_rows: Callable[[int], list[PromptRow]],
        target_groups: int,
        n_samples: int,
        params: SamplingParams,
        sampling: DynamicSampling,
    ) -> tuple[list[Sample], dict[str, float]]:
        """Fill a batch of `target_groups` groups that pass the filter, over-sampling in rounds.

        Once the batch is full, engine calls still running or queued are aborted and what they return is
        discarded (counted as `rollout/groups_aborted`). If `max_rounds` rounds cannot fill it, warn and
        return the groups that passed, rather than stop the run.
        """
        start, restarts_before = time.time(), self.pool.restarts
        kept: list[list[Sample]] = []
        raw_scores: list[float] = []
        counts: Counter[str] = Counter()
        reward_counts: Counter = Counter()
        for round_index in range(sampling.max_rounds):
            rows = next_rows(sampling.round_size(target_groups - len(kept)))
            pending = self.submit(rows, n_samples, params, f"rollout round {round_index + 1}")
            for chunk, remaining in self._graded_chunks(pending, reward_counts):
                for group, passed in sampling.judge_chunk(chunk, counts):
                    raw_scores.extend(s.score for s in group)
                    if not passed:
                        continue
                    if len(kept) < target_groups:
                        kept.append(group)
                    else:
                        counts["groups_surplus"] += 1
                if len(kept) == target_groups:
                    # running calls cannot be cancelled: abort them and wait, so no generation outlives the batch
                    # (a colocated engine releases its memory next)
                    self.pool.abort(pending.requests[r] for r in remaining)
                    ray.wait(remaining, num_returns=len(remaining))
                    counts["groups_aborted"] += sum(len(pending.requests[r].chunk) for r in remaining) // n_samples
                    break
            if len(kept) == target_groups:
                break
        else:
            logger.warning(
                "dynamic sampling filled only %d of %d groups in %d rounds (--max-sampling-rounds); training on what passed",
                len(kept), target_groups, sampling.max_rounds,
            )
        samples = indexed([s for g in kept for s in g])
        metrics = {f"rollout/{k}": float(v) for k, v in counts.items()}
        metrics["rollout/groups_kept"] = float(len(kept))
        metrics["rollout/sampling_rounds"] = float(round_index + 1)
        metrics["rollout/raw_reward_mean"] = sum(raw_scores) / max(len(raw_scores), 1)
        metrics["rollout/engine_restarts"] = float(self.pool.restarts - restarts_before)
        metrics |= reward_failure_metrics(reward_counts)
        if samples:
            metrics["perf/rollout_time_s"] = max(s.metadata[FINISHED_AT] for s in samples) - start
        return samples, metrics


def reward_failure_metrics(counts: Counter) -> dict[str, float]:
    return {"reward/timeouts": float(counts["timeouts"]), "reward/errors": float(counts["errors"])}


def indexed(samples: list[Sample]) -> list[Sample]:
    samples.sort(key=lambda s: s.group_id)
    for i, sample in enumerate(samples):
        sample.index = i
    return samples
