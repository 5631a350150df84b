"""RolloutManager: turns prompt rows into graded sample groups using whatever engines it is given."""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import ray
from tqdm import tqdm

from async_rl.data.prompt_dataset import PromptRow
from async_rl.rollout.engine import FINISHED_AT, SamplingParams
from async_rl.rollout.filters import GroupFilter
from async_rl.sample import Sample
from rewards.grading import RewardGrader

logger = logging.getLogger(__name__)


@dataclass
class PendingRollout:
    """Generation in flight on the engines: chunks of whole groups and the refs that will hold them."""

    requests: dict[ray.ObjectRef, tuple[int, Any, list[Sample]]]  # ref -> (engine rank, engine, its chunk)
    params: SamplingParams
    description: str
    submitted_at: float

    @property
    def n_samples(self) -> int:
        return sum(len(chunk) for _, _, chunk in self.requests.values())


@dataclass(frozen=True)
class DynamicSampling:
    """How a training batch is filled: request groups in rounds until enough pass the filter."""

    group_filter: GroupFilter | None
    groups_per_round: int  # --over-sampling-batch-size (the batch size itself without over-sampling)
    max_rounds: int


class RolloutManager:
    def __init__(self, engine_factory: Callable[[int], Any], num_engines: int, grader: RewardGrader, *,
                 chunks_per_engine: int = 2):
        """`engine_factory(rank)` starts engine `rank`; it is called again to replace an engine that died."""
        self.engine_factory = engine_factory
        self.engines = [engine_factory(rank) for rank in range(num_engines)]
        self.grader = grader
        self.restarts = 0
        self._weights: tuple[list[ray.ObjectRef], int] = ([], 0)  # the buckets and version engines hold now
        self.chunks_per_engine = chunks_per_engine
        self._group_ids = itertools.count()  # thread-safe: eval and the async producer both make groups

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
        """Send every group to an engine, round-robin in chunks of whole groups; returns at once."""
        groups = self.make_groups(rows, n_samples)
        n_chunks = min(len(groups), len(self.engines) * self.chunks_per_engine)
        chunks = [[s for g in groups[i::n_chunks] for s in g] for i in range(n_chunks)]
        requests = {}
        for i, chunk in enumerate(chunks):
            rank = i % len(self.engines)
            engine = self.engines[rank]
            requests[engine.generate.remote(chunk, params)] = (rank, engine, chunk)
        return PendingRollout(requests, params, description, time.time())

    def _restart(self, rank: int, dead: Any) -> None:
        """Replace a dead engine with a fresh one holding the current weights (once per death)."""
        if self.engines[rank] is not dead:
            return  # another chunk of the same engine already brought it back
        logger.warning("rollout engine %d died; restarting it with weight version %d", rank, self._weights[1])
        ray.kill(dead)
        self.engines[rank] = self.engine_factory(rank)
        buckets, version = self._weights
        ray.get([self.engines[rank].load_weights.remote(b) for b in buckets]
                + [self.engines[rank].set_weight_version.remote(version)])
        self.restarts += 1

    def _reissue(self, pending: PendingRollout, ref: ray.ObjectRef) -> ray.ObjectRef:
        """Generate a lost chunk again on its engine's replacement; the same samples, none counted twice."""
        rank, dead, chunk = pending.requests.pop(ref)
        self._restart(rank, dead)
        engine = self.engines[rank]
        new_ref = engine.generate.remote(chunk, pending.params)
        pending.requests[new_ref] = (rank, engine, chunk)
        return new_ref

    def _finished_chunks(self, pending: PendingRollout, reward_counts: Counter):
        """Yield each chunk's graded samples as its engine call completes, with a progress bar.

        Grading failures (timeouts, errors) are added to `reward_counts`.
        """
        remaining = list(pending.requests)
        with tqdm(total=pending.n_samples, desc=pending.description, leave=False, disable=None) as bar:
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                try:
                    chunk = ray.get(ready[0])
                except ray.exceptions.RayActorError:  # a failed call is the health check: the engine died
                    remaining.append(self._reissue(pending, ready[0]))
                    continue
                for position, sample in enumerate(chunk):
                    sample.index = position
                rewards, counts = self.grader.grade(chunk)
                for sample, reward in zip(chunk, rewards):
                    sample.reward = reward
                reward_counts.update(counts)
                bar.update(len(chunk))
                yield chunk, remaining

    def collect(self, pending: PendingRollout) -> tuple[list[Sample], dict[str, float]]:
        """Wait for a submitted rollout and grade it.

        Returns the samples, grouped and indexed, and timings: `perf/rollout_time_s` from submission to the
        last response, as the engines saw it, and `perf/rollout_wait_s`, how long this call blocked.
        """
        wait_start, restarts_before = time.time(), self.restarts
        reward_counts: Counter = Counter()
        done = [s for chunk, _ in self._finished_chunks(pending, reward_counts) for s in chunk]
        metrics = {
            "perf/rollout_time_s": max(s.metadata[FINISHED_AT] for s in done) - pending.submitted_at,
            "perf/rollout_wait_s": time.time() - wait_start,
            "rollout/engine_restarts": float(self.restarts - restarts_before),
        }
        return _indexed(done), metrics | _reward_failure_metrics(reward_counts)

    def generate_batch(
        self,
        next_rows: Callable[[int], list[PromptRow]],
        target_groups: int,
        n_samples: int,
        params: SamplingParams,
        sampling: DynamicSampling,
    ) -> tuple[list[Sample], dict[str, float]]:
        """Fill a batch of `target_groups` groups that pass the filter, over-sampling in rounds.

        Once the batch is full, engine calls still queued are cancelled and what still arrives is
        discarded (counted as `rollout/groups_aborted`). If `max_rounds` rounds cannot fill it, warn and
        return the groups that passed, rather than stop the run.
        """
        start, restarts_before = time.time(), self.restarts
        kept: list[list[Sample]] = []
        raw_scores: list[float] = []
        counts: Counter[str] = Counter()
        reward_counts: Counter = Counter()
        for round_index in range(sampling.max_rounds):
            pending = self.submit(next_rows(sampling.groups_per_round), n_samples, params, f"rollout round {round_index + 1}")
            for chunk, remaining in self._finished_chunks(pending, reward_counts):
                for group in _split_groups(chunk):
                    counts["groups_generated"] += 1
                    raw_scores.extend(s.score for s in group)
                    result = sampling.group_filter(group) if sampling.group_filter else None
                    if result is not None and not result.keep:
                        counts[f"filter_drop_{result.reason}"] += 1
                    elif len(kept) < target_groups:
                        kept.append(group)
                    else:
                        counts["groups_surplus"] += 1
                if len(kept) == target_groups:
                    for ref in remaining:
                        ray.cancel(ref)
                    counts["groups_aborted"] += sum(len(pending.requests[r][2]) for r in remaining) // n_samples
                    break
            if len(kept) == target_groups:
                break
        else:
            logger.warning(
                "dynamic sampling filled only %d of %d groups in %d rounds (--max-sampling-rounds); training on what passed",
                len(kept), target_groups, sampling.max_rounds,
            )
        samples = _indexed([s for g in kept for s in g])
        metrics = {f"rollout/{k}": float(v) for k, v in counts.items()}
        metrics["rollout/groups_kept"] = float(len(kept))
        metrics["rollout/sampling_rounds"] = float(round_index + 1)
        metrics["rollout/raw_reward_mean"] = sum(raw_scores) / max(len(raw_scores), 1)
        metrics["rollout/engine_restarts"] = float(self.restarts - restarts_before)
        metrics |= _reward_failure_metrics(reward_counts)
        if samples:
            metrics["perf/rollout_time_s"] = max(s.metadata[FINISHED_AT] for s in samples) - start
        return samples, metrics

    def update_weights(self, bucket_refs: Iterable[ray.ObjectRef], version: int) -> list[ray.ObjectRef]:
        """Queue weight buckets on every engine as they arrive, then the new version.

        Each engine applies them after the generate calls already queued on it; the returned refs
        resolve once every engine has the new version (and raise if any load failed).
        """
        buckets, loads = [], []
        for bucket in bucket_refs:  # dispatched as each bucket arrives from the trainer
            buckets.append(bucket)
            loads += [engine.load_weights.remote(bucket) for engine in self.engines]
        self._weights = (buckets, version)  # kept so that a restarted engine gets them too
        return loads + [engine.set_weight_version.remote(version) for engine in self.engines]


def _reward_failure_metrics(counts: Counter) -> dict[str, float]:
    return {"reward/timeouts": float(counts["timeouts"]), "reward/errors": float(counts["errors"])}


def _split_groups(chunk: list[Sample]) -> list[list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for s in chunk:
        groups.setdefault(s.group_id, []).append(s)
    return list(groups.values())


def _indexed(samples: list[Sample]) -> list[Sample]:
    samples.sort(key=lambda s: s.group_id)
    for i, sample in enumerate(samples):
        sample.index = i
    return samples
