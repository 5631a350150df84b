"""Continuous rollout for the async loop: a background thread keeps a bounded buffer of graded groups.

Admission control (AReaL's rule) bounds staleness by construction: a new group is admitted only while

    min(max_running - running, (max_staleness + version + 1) * batch_groups - (accepted + running)) > 0

where `version` is the newest weight version pushed to the engines and `accepted` counts every group
that entered the buffer and was not dropped as too stale (a dropped group gives its place back, or the
drops would shrink the budget for the rest of the run until no batch could fill). A group admitted under
version v is trained by step v + max_staleness at the latest, so no trained sample is more than
`max_staleness` versions old, and the buffer never holds more than (max_staleness + 1) batches: it is
bounded and pushes back on generation. The counters are part of the checkpoint, so the bound also holds
right after a resume.

With a dynamic-sampling filter only a fraction of the running groups will enter the buffer, and counting
each in full would produce a batch in a series of shrinking rounds (one batch's worth, then the share the
filter dropped, then the share of that ...), each paying a whole generation's latency while the trainer
waits. Running groups therefore count at the filter's recent keep rate. When more pass than expected, the
surplus exceeds the bound; `take_batch` drops groups older than `--max-staleness` whole before it fills
a batch and counts their samples (`rollout/stale_dropped`), so batches stay full and the bound on trained
samples still holds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import ray
import torch

from async_rl.data.prompt_dataset import PromptDataset, PromptRow
from async_rl.errors import TrainingAborted
from async_rl.rollout.batch_assembler import BatchAssembler, indexed, reward_failure_metrics
from async_rl.rollout.dynamic_sampling import DynamicSampling, KeepRate, split_groups
from async_rl.rollout.engine import FINISHED_AT, SamplingParams
from async_rl.rollout.engine_pool import PendingRollout
from async_rl.sample import Sample, SampleStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionControl:
    batch_groups: int
    max_staleness: int
    max_running: int

    def capacity(self, version: int, accepted: int, running: int, keep_rate: float = 1.0) -> int:
        """How many more groups may start generating now, when a running group enters the buffer with
        probability `keep_rate` (1 without a dynamic-sampling filter)."""
        room = (self.max_staleness + version + 1) * self.batch_groups - accepted
        if room <= 0:
            return 0
        expected_running = math.ceil(room / keep_rate) if keep_rate > 0 else self.max_running
        return min(self.max_running, expected_running) - running


def within_staleness(group: list[Sample], version: int, max_staleness: int) -> bool:
    """Whether the step that trains `version` may use this group: its oldest token is at most `max_staleness`
    versions behind (a partial rollout continued across a push carries several versions)."""
    return version - min(s.weight_version for s in group) <= max_staleness


def staleness_metrics(samples: list[Sample], version: int) -> dict[str, float]:
    staleness = [version - s.weight_version for s in samples]
    return {"rollout/staleness_mean": sum(staleness) / len(staleness), "rollout/staleness_max": float(max(staleness))}


@dataclass
class _BufferedGroup:
    samples: list[Sample]
    admitted_at: float


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    """JSON-ready (checkpoints of the rollout buffer, debug rollout data)."""
    routing = sample.routed_experts
    return asdict(sample) | {"status": sample.status.value,
                             "routed_experts": routing.tolist() if routing is not None else None}


def sample_from_dict(d: dict[str, Any]) -> Sample:
    routing = d.get("routed_experts")
    return Sample(**(d | {"status": SampleStatus(d["status"]),
                          "routed_experts": torch.tensor(routing, dtype=torch.int16) if routing is not None else None}))


class RolloutProducer:
    """Generates, grades and filters groups in the background; the trainer takes whole batches.

    For partial rollouts the loop calls `abort_in_flight()` just before a weight push: every running
    generation stops, the tokens generated so far are kept with their log-probs, and the samples continue
    with the new weights once `set_version` announces them. Otherwise a push waits behind queued generation.
    """

    def __init__(
        self,
        assembler: BatchAssembler,
        dataset: PromptDataset,
        n_samples: int,
        params: SamplingParams,
        sampling: DynamicSampling,
        admission: AdmissionControl,
        *,
        version: int,
        resume_state: dict[str, Any] | None = None,
    ):
        self.assembler, self.pool = assembler, assembler.pool
        self.dataset, self.n_samples, self.sampling = dataset, n_samples, sampling
        self.admission = admission
        self.version = version
        self.accepted = 0
        self.buffer: list[_BufferedGroup] = []
        self._retry_rows: list[PromptRow] = []  # prompts that were generating when the checkpoint was taken
        if resume_state:
            self._restore(resume_state)
        self._calls = PendingRollout({}, params, "async rollout", time.time())
        self._admitted_at: dict[int, float] = {}  # group id -> when it was admitted
        self._parked: list[list[Sample]] = []  # aborted chunks waiting for the new weights
        self._grading: list[list[Sample]] = []  # finished chunks being graded, outside the lock
        self._abort_version: int | None = None
        n_engines = len(self.pool.engines)
        self._chunk_groups = 1 if self.pool.per_group else max(
            1, math.ceil(admission.max_running / (n_engines * self.pool.chunks_per_engine)))
        self._keep_rate = KeepRate(window=2 * admission.batch_groups)
        self._counts: Counter[str] = Counter()
        self._reward_counts: Counter = Counter()
        self._restarts_at_take = self.pool.restarts
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)

    # ---- trainer side -------------------------------------------------------------------------------

    def start(self) -> "RolloutProducer":
        self._thread.start()
        return self

    def take_batch(self, target_groups: int) -> tuple[list[Sample], dict[str, float]]:
        """Block until `target_groups` groups are buffered and return them with the pipeline's metrics.

        With a dynamic-sampling filter that keeps rejecting, give up once `--max-sampling-rounds` rounds'
        worth of groups were generated for this batch and return what passed (as the sync loop does).
        """
        give_up_after = self.sampling.max_rounds * self.sampling.groups_per_round
        wait_start = time.time()
        with self._cond:
            while self._discard_stale() < target_groups and self._error is None:
                if self.sampling.group_filter and self._counts["groups_generated"] >= give_up_after:
                    logger.warning("dynamic sampling filled only %d of %d groups within --max-sampling-rounds "
                                   "rounds' worth of groups; training on what passed", len(self.buffer), target_groups)
                    break
                self._cond.wait(timeout=1.0)
            if isinstance(self._error, TrainingAborted):  # a deliberate stop, said in one line like the sync loop's
                raise self._error
            if self._error is not None:
                raise RuntimeError("the rollout producer failed") from self._error
            taken, self.buffer = self.buffer[:target_groups], self.buffer[target_groups:]
            metrics = {f"rollout/{k}": float(v) for k, v in self._counts.items()}
            metrics |= reward_failure_metrics(self._reward_counts)
            metrics |= {
                "rollout/groups_kept": float(len(taken)),
                "rollout/buffer_groups": float(len(self.buffer)),
                "rollout/running_groups": float(self._running),
                "rollout/admission_keep_rate": self._keep_rate.value,
                "rollout/engine_restarts": float(self.pool.restarts - self._restarts_at_take),
            }
            self._counts.clear()
            self._reward_counts.clear()
            self._restarts_at_take = self.pool.restarts
            self._cond.notify_all()
        samples = indexed([s for g in taken for s in g.samples])
        metrics["perf/rollout_wait_s"] = time.time() - wait_start
        if taken:
            metrics |= staleness_metrics(samples, self.version)
            first_admitted = min(g.admitted_at for g in taken)  # restored groups count from the resume
            metrics["perf/rollout_time_s"] = max(0.0, max(s.metadata[FINISHED_AT] for s in samples) - first_admitted)
        return samples, metrics

    def _discard_stale(self) -> int:
        """Drop buffered groups that the step about to train (`version`) may no longer use, counting their samples
        (admission lets a few through when more groups pass the filter than expected); returns the groups left."""
        fresh = [g for g in self.buffer if within_staleness(g.samples, self.version, self.admission.max_staleness)]
        self._counts["stale_dropped"] += sum(len(g.samples) for g in self.buffer) - sum(len(g.samples) for g in fresh)
        self.accepted -= len(self.buffer) - len(fresh)  # admission may replace them
        self.buffer = fresh
        return len(fresh)

    def abort_in_flight(self) -> None:
        """Partial rollouts: stop running generation before a weight push; it resumes after `set_version`."""
        with self._cond:
            self._abort_version = self.version
            self.pool.abort(list(self._calls.requests.values()))

    def set_version(self, version: int) -> None:
        """The engines have this version queued: admit (and continue) generation under it."""
        with self._cond:
            self.version = version
            self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume without losing or repeating a prompt, taken at one instant.

        Buffered groups are kept whole; groups still generating are saved as prompts to generate again.
        """
        with self._cond:
            generating = [c.chunk for c in self._calls.requests.values()] + self._parked + self._grading
            retry = [asdict(row) for row in self._retry_rows]
            retry += [asdict(PromptRow(g[0].prompt, g[0].prompt_tokens, g[0].label, g[0].metadata))
                      for chunk in generating for g in split_groups(chunk)]
            return {
                "dataset": self.dataset.state_dict(),
                "accepted": self.accepted,
                "buffer": [[sample_to_dict(s) for s in g.samples] for g in self.buffer],
                "retry_prompts": retry,
            }

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ---- producer thread ------------------------------------------------------------------------------

    @property
    def _running(self) -> int:
        in_calls = sum(len(c.chunk) for c in self._calls.requests.values())
        return (in_calls + sum(len(c) for c in self._parked + self._grading)) // self.n_samples

    def _restore(self, state: dict[str, Any]) -> None:
        self.accepted = int(state["accepted"])
        now = time.time()
        self.buffer = [_BufferedGroup([sample_from_dict(d) for d in g], now) for g in state["buffer"]]
        self._retry_rows = [PromptRow(**row) for row in state["retry_prompts"]]
        self.assembler.start_group_ids_at(1 + max((s.group_id for g in self.buffer for s in g.samples), default=-1))

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stopping:
                        return
                    self._resume_parked()
                    self._admit()
                    refs = list(self._calls.requests)
                    if not refs:
                        self._cond.wait(timeout=0.1)
                        continue
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.1)
                if ready:
                    self._receive(ready[0])
        except BaseException as e:  # surfaced to the trainer by take_batch
            if not isinstance(e, TrainingAborted):
                logger.exception("rollout producer failed")
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _admit(self) -> None:
        capacity = self.admission.capacity(self.version, self.accepted, self._running, self._keep_rate.value)
        while capacity > 0:
            n = min(capacity, self._chunk_groups)
            rows, self._retry_rows = self._retry_rows[:n], self._retry_rows[n:]
            rows += self.dataset.next_batch(n - len(rows)) if len(rows) < n else []
            groups = self.assembler.make_groups(rows, self.n_samples)
            now = time.time()
            self._admitted_at |= {g[0].group_id: now for g in groups}
            self.pool.dispatch(self._calls, [s for g in groups for s in g], self.pool.least_busy(self._calls))
            capacity -= n

    def _resume_parked(self) -> None:
        if self._parked and self._abort_version is not None and self.version > self._abort_version:
            for chunk in self._parked:
                self.pool.dispatch(self._calls, chunk, self.pool.least_busy(self._calls))
            self._parked.clear()

    def _receive(self, ref: ray.ObjectRef) -> None:
        try:
            chunk = ray.get(ref)
        except ray.exceptions.RayActorError:  # a failed call is the health check: the engine died
            with self._cond:
                self.pool.reissue(self._calls, ref)
            return
        with self._cond:
            self._calls.requests.pop(ref)
            aborted = sum(s.status == SampleStatus.ABORTED for s in chunk)
            if aborted:
                self._counts["partial_aborted_samples"] += aborted
                self._parked.append(chunk)
                return
            self._grading.append(chunk)  # still counted as running, and saved by a snapshot, while it is graded
        reward_counts: Counter = Counter()
        self.assembler.grade(chunk, reward_counts)  # outside the lock: the trainer can take a batch meanwhile
        with self._cond:
            self._grading = [c for c in self._grading if c is not chunk]
            self._reward_counts.update(reward_counts)
            for group, passed in self.sampling.judge_chunk(chunk, self._counts):
                self._keep_rate.add(passed)
                if passed:
                    self.buffer.append(_BufferedGroup(group, self._admitted_at.get(group[0].group_id, time.time())))
                    self.accepted += 1
                self._admitted_at.pop(group[0].group_id, None)
            self._cond.notify_all()
