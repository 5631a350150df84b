"""EnginePool: the rollout engine actors, what is in flight on them, and their life (restarts, memory, weights).

It knows nothing of rewards or batches: `BatchAssembler` (sync loop, evaluation) and `RolloutProducer` (async loop)
hand it groups to generate and take the finished chunks back.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import ray

from async_rl.rollout.engine import GENERATE_GROUP, SamplingParams
from async_rl.sample import Sample
from async_rl.weights.transports import WeightSync

logger = logging.getLogger(__name__)


@dataclass
class EngineCall:
    """One `generate` call in flight: a group, or a chunk of whole groups, on one engine."""

    rank: int
    engine: Any
    chunk: list[Sample]
    request_id: int


@dataclass
class PendingRollout:
    """Generation in flight on the engines: the calls and the refs that will hold their samples."""

    requests: dict[ray.ObjectRef, EngineCall]
    params: SamplingParams
    description: str
    submitted_at: float

    @property
    def n_samples(self) -> int:
        return sum(len(call.chunk) for call in self.requests.values())


class EnginePool:
    def __init__(self, engine_factory: Callable[[int], Any], num_engines: int, weight_sync: WeightSync, *,
                 chunks_per_engine: int = 2, custom_generate: str | None = None, per_group: bool = False):
        """`engine_factory(rank)` starts engine `rank`; it is called again to replace an engine that died.
        `custom_generate` (`--custom-generate-function-path`) replaces the engines' own generation loop.

        `per_group`: engines that batch concurrent calls themselves (SGLang's continuous batching) get one call per
        group, all at once, in their `generate` concurrency group, so each group is graded and filtered as soon as
        its own samples finish, and no call waits for another's slowest sample. Otherwise (the local engine, which
        batches within a call) groups go out in `chunks_per_engine` chunks per engine, run one after another."""
        self.engine_factory = engine_factory
        self.engines = [engine_factory(rank) for rank in range(num_engines)]
        self.weight_sync = weight_sync
        weight_sync.connect(self.engines)
        self.restarts = 0
        self.chunks_per_engine = chunks_per_engine
        self.per_group = per_group
        self.custom_generate = custom_generate
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

    # ---- generation -------------------------------------------------------------------------------------
    def send(self, groups: list[list[Sample]], params: SamplingParams, description: str) -> PendingRollout:
        """Every group to an engine, round-robin, a call per group or per chunk of whole groups (`per_group`);
        returns at once."""
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

    def least_busy(self, pending: PendingRollout) -> int:
        """The engine with the fewest of `pending`'s calls."""
        load = Counter(call.rank for call in pending.requests.values())
        return min(range(len(self.engines)), key=lambda rank: load[rank])

    def finished(self, pending: PendingRollout) -> Iterator[tuple[list[Sample], list[ray.ObjectRef]]]:
        """Each call's samples as it completes, with the refs still running; a call whose engine died is generated
        again on its replacement."""
        remaining = list(pending.requests)
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1)
            try:
                chunk = ray.get(ready[0])
            except ray.exceptions.RayActorError:  # a failed call is the health check: the engine died
                remaining.append(self.reissue(pending, ready[0]))
                continue
            yield chunk, remaining

    def abort(self, calls: Iterable[EngineCall]) -> None:
        """Stop these calls at their next token (partial rollouts); they return ABORTED samples to continue.

        Sent through the engines' `control` concurrency group, so it reaches an engine busy generating.
        """
        by_engine: dict[int, tuple[Any, list[int]]] = {}
        for call in calls:
            by_engine.setdefault(id(call.engine), (call.engine, []))[1].append(call.request_id)
        for engine, request_ids in by_engine.values():
            engine.abort.options(concurrency_group="control").remote(request_ids)

    def reissue(self, pending: PendingRollout, ref: ray.ObjectRef) -> ray.ObjectRef:
        """Generate a lost chunk again on its engine's replacement; the same samples, none counted twice."""
        call = pending.requests.pop(ref)
        self._restart(call.rank, call.engine)
        return self.dispatch(pending, call.chunk, call.rank)

    # ---- engine life ------------------------------------------------------------------------------------
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

    def restart_dead_engines(self) -> None:
        """Health-check every engine (through its control thread) and replace the ones that do not answer."""
        for rank, engine in enumerate(list(self.engines)):
            try:
                ray.get(engine.health.options(concurrency_group="control").remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                self._restart(rank, engine)

    def update_weights(self, version: int) -> list[ray.ObjectRef]:
        """Push the trainer's weights to every engine as `version` (see `async_rl.weights.transports`).

        The returned refs resolve once every engine has the new version (and raise if any load failed).
        """
        with self._engines_lock:
            return self.weight_sync.push(self.engines, version)

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

    def release_memory(self) -> None:
        """Colocated runs: every engine frees its GPU memory (weights, KV cache) for the trainer's step."""
        ray.get([engine.pause.remote() for engine in self.engines])

    def resume_memory(self) -> None:
        """Take the GPU memory back; what it holds is stale until the weight push that must follow."""
        ray.get([engine.resume.remote() for engine in self.engines])

    def rng_states(self) -> list[Any]:
        """Each engine's sampling RNG state for a checkpoint; None for an engine that just died."""
        states = []
        for engine in self.engines:
            try:
                states.append(ray.get(engine.rng_state.options(concurrency_group="control").remote()))
            except ray.exceptions.RayActorError:
                states.append(None)
        return states

    def close(self) -> None:
        for engine in self.engines:
            ray.kill(engine)
