"""RolloutManager: turns prompt rows into graded sample groups using whatever engines it is given."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import ray
from tqdm import tqdm

from async_rl.data.prompt_dataset import PromptRow
from async_rl.rollout.engine import FINISHED_AT, GENERATE_GROUP, SamplingParams
from async_rl.rollout.filters import GroupFilter
from async_rl.rollout.weight_sync import WeightSync
from async_rl.sample import Sample
from rewards.grading import RewardGrader

logger = logging.getLogger(__name__)


@dataclass
class EngineCall:
    """One `generate` call in flight: a chunk of whole groups on one engine."""

    rank: int
    engine: Any
    chunk: list[Sample]
    request_id: int


@dataclass
class PendingRollout:
    """Generation in flight on the engines: chunks of whole groups and the refs that will hold them."""

    requests: dict[ray.ObjectRef, EngineCall]
    params: SamplingParams
    description: str
    submitted_at: float

    @property
    def n_samples(self) -> int:
        return sum(len(call.chunk) for call in self.requests.values())


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

    def judge(self, group: list[Sample], counts: Counter) -> bool:
        """Whether a finished, graded group passes the filter; counts it as generated and, if dropped, why."""
        counts["groups_generated"] += 1
        result = self.group_filter(group) if self.group_filter else None
        if result is not None and not result.keep:
            counts[f"filter_drop_{result.reason}"] += 1
            return False
        return True


class RolloutManager:
    def __init__(self, engine_factory: Callable[[int], Any], num_engines: int, grader: RewardGrader,
                 weight_sync: WeightSync, *, chunks_per_engine: int = 2, custom_generate: str | None = None,
                 per_group: bool = False):
        """`engine_factory(rank)` starts engine `rank`; it is called again to replace an engine that died.
        `custom_generate` (`--custom-generate-function-path`) replaces the engines' own generation loop.

        `per_group`: engines that batch concurrent calls themselves (SGLang's continuous batching) get one call per
        group, all at once, in their `generate` concurrency group, so each group is graded and filtered as soon as
        its own samples finish, and no call waits for another's slowest sample. Otherwise (the local engine, which
        batches within a call) groups go out in `chunks_per_engine` chunks per engine, run one after another."""
        self.engine_factory = engine_factory
        self.engines = [engine_factory(rank) for rank in range(num_engines)]
        self.grader = grader
        self.weight_sync = weight_sync
        weight_sync.connect(self.engines)
        self.restarts = 0
        self.chunks_per_engine = chunks_per_engine
        self.per_group = per_group
        self.custom_generate = custom_generate
        self._group_ids = itertools.count()  # thread-safe: eval and the async producer both make groups
        self._request_ids = itertools.count()
        # One at a time: a push, a restart (which copies the weights the others hold into the new engine), and
        # a dispatch (queued between two buckets of a push, a chunk would generate with half-updated weights).
        # Re-entrant: a push may restart a dead engine.
        self._engines_lock = threading.RLock()

    def wait_ready(self) -> float:
        """Block until every engine has started (model loaded, server up); returns the seconds it took. Without it
        the first generation (an evaluation at step 0) would silently absorb the engines' start."""
        start = time.perf_counter()
        ray.get([engine.health.options(concurrency_group="control").remote() for engine in self.engines])
        return time.perf_counter() - start

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
        """Send every group to an engine, round-robin, a call per group or per chunk of whole groups (`per_group`);
        returns at once."""
        groups = self.make_groups(rows, n_samples)
        n_chunks = len(groups) if self.per_group else min(len(groups), len(self.engines) * self.chunks_per_engine)
        pending = PendingRollout({}, params, description, time.time())
        for i in range(n_chunks):
            self.dispatch(pending, [s for g in groups[i::n_chunks] for s in g], i % len(self.engines))
        return pending

    def dispatch(self, pending: PendingRollout, chunk: list[Sample], rank: int) -> ray.ObjectRef:
        """Queue one chunk on engine `rank` and record the call in `pending`."""
        with self._engines_lock:
            call = EngineCall(rank, self.engines[rank], chunk, next(self._request_ids))
            options = {"concurrency_group": GENERATE_GROUP} if self.per_group else {}
            if self.custom_generate:
                ref = call.engine.generate_custom.options(**options).remote(
                    self.custom_generate, chunk, pending.params, call.request_id)
            else:
                ref = call.engine.generate.options(**options).remote(chunk, pending.params, call.request_id)
        pending.requests[ref] = call
        return ref

    def abort(self, calls: Iterable[EngineCall]) -> None:
        """Stop these calls at their next token (partial rollouts); they return ABORTED samples to continue.

        Sent through the engines' `control` concurrency group, so it reaches an engine busy generating.
        """
        by_engine: dict[int, tuple[Any, list[int]]] = {}
        for call in calls:
            by_engine.setdefault(id(call.engine), (call.engine, []))[1].append(call.request_id)
        for engine, request_ids in by_engine.values():
            engine.abort.options(concurrency_group="control").remote(request_ids)

    def _restart(self, rank: int, dead: Any) -> None:
        """Replace a dead engine with a fresh one holding the current weights (once per death)."""
        with self._engines_lock:  # the async producer and an evaluation may both find the same dead engine
            if self.engines[rank] is not dead:
                return  # another chunk of the same engine already brought it back
            logger.warning("rollout engine %d died; restarting it with the current weights", rank)
            ray.kill(dead)
            self.engines[rank] = self.engine_factory(rank)
            self.weight_sync.restore(self.engines, rank)
            self.restarts += 1

    def reissue(self, pending: PendingRollout, ref: ray.ObjectRef) -> ray.ObjectRef:
        """Generate a lost chunk again on its engine's replacement; the same samples, none counted twice."""
        call = pending.requests.pop(ref)
        self._restart(call.rank, call.engine)
        return self.dispatch(pending, call.chunk, call.rank)

    def grade(self, chunk: list[Sample], reward_counts: Counter) -> None:
        """Reward every sample of a finished chunk in place; timeouts and errors are added to `reward_counts`."""
        for position, sample in enumerate(chunk):
            sample.index = position
        rewards, counts = self.grader.grade(chunk)
        for sample, reward in zip(chunk, rewards):
            sample.reward = reward
        reward_counts.update(counts)

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
                    remaining.append(self.reissue(pending, ready[0]))
                    continue
                self.grade(chunk, reward_counts)
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
        start, restarts_before = time.time(), self.restarts
        kept: list[list[Sample]] = []
        raw_scores: list[float] = []
        counts: Counter[str] = Counter()
        reward_counts: Counter = Counter()
        for round_index in range(sampling.max_rounds):
            rows = next_rows(sampling.round_size(target_groups - len(kept)))
            pending = self.submit(rows, n_samples, params, f"rollout round {round_index + 1}")
            for chunk, remaining in self._finished_chunks(pending, reward_counts):
                for group in split_groups(chunk):
                    raw_scores.extend(s.score for s in group)
                    passed = sampling.judge(group, counts)
                    sampling.observe(passed)
                    if not passed:
                        continue
                    if len(kept) < target_groups:
                        kept.append(group)
                    else:
                        counts["groups_surplus"] += 1
                if len(kept) == target_groups:
                    # running calls cannot be cancelled: abort them and wait, so no generation outlives the batch
                    # (a colocated engine releases its memory next)
                    self.abort(pending.requests[r] for r in remaining)
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
        metrics["rollout/engine_restarts"] = float(self.restarts - restarts_before)
        metrics |= reward_failure_metrics(reward_counts)
        if samples:
            metrics["perf/rollout_time_s"] = max(s.metadata[FINISHED_AT] for s in samples) - start
        return samples, metrics

    def update_weights(self, version: int) -> list[ray.ObjectRef]:
        """Push the trainer's weights to every engine as `version` (see `weight_sync`).

        The returned refs resolve once every engine has the new version (and raise if any load failed).
        """
        with self._engines_lock:
            return self.weight_sync.push(self.engines, version)

    def release_memory(self) -> None:
        """Colocated runs: every engine frees its GPU memory (weights, KV cache) for the trainer's step."""
        ray.get([engine.pause.remote() for engine in self.engines])

    def resume_memory(self) -> None:
        """Take the GPU memory back; what it holds is stale until the weight push that must follow."""
        ray.get([engine.resume.remote() for engine in self.engines])

    def wait_weights(self, refs: list[ray.ObjectRef]) -> None:
        """Wait for a weight push; an engine that died meanwhile is replaced, and gets the new weights."""
        lost = False
        for ref in refs:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                lost = True
        if lost:
            self.restart_dead_engines()

    def rng_states(self) -> list[Any]:
        """Each engine's sampling RNG state for a checkpoint; None for an engine that just died."""
        states = []
        for engine in self.engines:
            try:
                states.append(ray.get(engine.rng_state.options(concurrency_group="control").remote()))
            except ray.exceptions.RayActorError:
                states.append(None)
        return states

    def restart_dead_engines(self) -> None:
        """Health-check every engine (through its control thread) and replace the ones that do not answer."""
        for rank, engine in enumerate(list(self.engines)):
            try:
                ray.get(engine.health.options(concurrency_group="control").remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self._restart(rank, engine)


def reward_failure_metrics(counts: Counter) -> dict[str, float]:
    return {"reward/timeouts": float(counts["timeouts"]), "reward/errors": float(counts["errors"])}


def split_groups(chunk: list[Sample]) -> list[list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for s in chunk:
        groups.setdefault(s.group_id, []).append(s)
    return list(groups.values())


def indexed(samples: list[Sample]) -> list[Sample]:
    samples.sort(key=lambda s: s.group_id)
    for i, sample in enumerate(samples):
        sample.index = i
    return samples
