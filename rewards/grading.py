"""Grading samples without ever stalling training.

Sync reward functions run in a pool of worker processes, each call under a per-sample timeout (an alarm
inside the worker, and a hard deadline outside it that replaces the pool if a worker is stuck in C code).
Async functions run on an event loop under `asyncio.wait_for`. A call that times out or raises gives
the configured default reward and is counted, with one warning per batch; the run goes on, unless the
function has never returned a valid reward, in which case the run stops with that function's first error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import pickle
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, wait
from typing import Any

from async_rl.errors import TrainingAborted
from rewards.registry import RewardSpec

logger = logging.getLogger(__name__)
_HARD_DEADLINE_GRACE_S = 5.0
_WORKER_START_TIMEOUT_S = 120.0


class RewardFunctionBroken(TrainingAborted):
    """The reward function failed on every sample it was given: the run stops rather than learn from nothing."""


class _Timeout(Exception):
    pass


def _raise_timeout(signum, frame):
    raise _Timeout()


def _call_with_alarm(fn, call_args: tuple, timeout: float) -> tuple[str, Any]:
    """("ok", value), ("timeout", None) or ("error", message)."""
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return "ok", fn(*call_args)
    except _Timeout:
        return "timeout", None
    except Exception as e:  # a plugin's bug must not kill the worker; it is reported with its sample
        return "error", f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _call_each_with_alarm(fn, calls: list[tuple], timeout: float) -> list[tuple[str, Any]]:
    """Runs in a worker: several calls per task keep the inter-process traffic off the critical path."""
    return [_call_with_alarm(fn, call_args, timeout) for call_args in calls]


def _leave_stopping_to_the_driver(all_started: threading.Barrier) -> None:
    """Ctrl-C reaches every process of the terminal's group, and plain `timeout` (or a scheduler) sends SIGTERM to
    the whole group too: a worker ignores both (the driver finishes its step, saves and closes the pool; a worker
    whose driver is gone ends on its closed queue) instead of dying and breaking the pool mid-grading. The barrier
    holds each worker until all of them ignore the signals, so the pool is only handed out once none can die of one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    all_started.wait(_WORKER_START_TIMEOUT_S)


class RewardGrader:
    def __init__(self, spec: RewardSpec, *, args: argparse.Namespace, num_workers: int = 2,
                 timeout: float = 5.0, default: float = 0.0):
        self.spec = spec
        self.args = args
        self.num_workers = num_workers
        self.timeout = timeout
        self.default = default
        self._pool: ProcessPoolExecutor | None = None
        self._succeeded = False  # any valid reward yet; until then, a call that only errors stops the run
        if not spec.is_async:
            try:
                pickle.dumps(spec.fn)
            except Exception as e:
                raise ValueError(f"{spec.name}: the function cannot be sent to a grading worker "
                                 f"(define it at module level): {e}") from None

    def _workers(self) -> ProcessPoolExecutor:
        """The pool, with every worker started and ignoring Ctrl-C before it gets work: the pool would otherwise
        start workers on demand, and one still starting when a stop signal arrives dies and breaks the pool. Each
        of the first `num_workers` submits starts a worker (none is idle yet), and no task runs before every worker
        has reached the barrier. Spawned, not forkserver: the pool watches a forkserver worker through the
        forkserver process, which a SIGTERM to the group kills, and the pool then counts every worker as dead."""
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=context,
                                             initializer=_leave_stopping_to_the_driver,
                                             initargs=(context.Barrier(self.num_workers),))
            wait([self._pool.submit(time.sleep, 0) for _ in range(self.num_workers)])
        return self._pool

    def _replace_pool(self) -> None:
        """Kill workers stuck past the hard deadline; the next call starts fresh ones."""
        if self._pool is not None:
            for process in list(self._pool._processes.values()):
                process.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _call_args(self, unit: list) -> tuple:
        payload = unit if self.spec.group else unit[0]
        return (self.args, payload) if self.spec.takes_args else (payload,)

    def _run_in_pool(self, units: list[list]) -> list[tuple[str, Any]]:
        """Units go out in a few tasks per worker; a task past the hard deadline times out all its units."""
        pool = self._workers()
        n_tasks = min(len(units), self.num_workers * 4)
        tasks = [list(range(i, len(units), n_tasks)) for i in range(n_tasks)]
        futures = [pool.submit(_call_each_with_alarm, self.spec.fn, [self._call_args(units[j]) for j in task], self.timeout)
                   for task in tasks]
        budget = self.timeout * math.ceil(len(units) / self.num_workers) + _HARD_DEADLINE_GRACE_S
        done, not_done = wait(futures, timeout=budget)
        if not_done:
            self._replace_pool()
        outcomes: list[tuple[str, Any]] = [("timeout", None)] * len(units)
        for task, future in zip(tasks, futures):
            if future in done:
                for j, outcome in zip(task, future.result()):
                    outcomes[j] = outcome
        return outcomes

    async def _run_async(self, units: list[list]) -> list[tuple[str, Any]]:
        async def one(unit):
            try:
                return "ok", await asyncio.wait_for(self.spec.fn(*self._call_args(unit)), self.timeout)
            except asyncio.TimeoutError:
                return "timeout", None
            except Exception as e:
                return "error", f"{type(e).__name__}: {e}"

        return await asyncio.gather(*(one(u) for u in units))

    def grade(self, samples: list) -> tuple[list[float | dict], Counter]:
        """Rewards in sample order, and counts of `timeouts` and `errors` (each such sample gets the default)."""
        if self.spec.group:
            by_group: dict[int, list] = {}
            for s in samples:
                by_group.setdefault(s.group_id, []).append(s)
            units = list(by_group.values())
        else:
            units = [[s] for s in samples]
        outcomes = asyncio.run(self._run_async(units)) if self.spec.is_async else self._run_in_pool(units)
        counts: Counter = Counter()
        first_failure: str | None = None
        rewards: dict[int, float | dict] = {}
        for unit, (status, value) in zip(units, outcomes):
            values, failure = self._check(unit, status, value)
            if failure is None:
                self._succeeded = True
            else:
                counts["timeouts" if status == "timeout" else "errors"] += len(unit)
                first_failure = first_failure or failure
            for sample, reward in zip(unit, values):
                rewards[id(sample)] = reward
        if first_failure is not None:
            self._report(first_failure, counts, len(samples))
        return [rewards[id(s)] for s in samples], counts

    def _check(self, unit: list, status: str, value: Any) -> tuple[list[float | dict], str | None]:
        """The unit's rewards and None, or the default for each of its samples and the reason, naming the unit."""
        if status == "ok":
            values = value if self.spec.group else [value]
            if self.spec.group and (not isinstance(value, list) or len(value) != len(unit)):
                status, value = "error", f"returned {_clip(value)}, expected a list of {len(unit)} rewards"
            elif not all(_is_reward(v) for v in values):
                status, value = "error", f"returned {_clip(value)}, expected a float or a dict with 'score'"
            else:
                return values, None
        where = f"group {unit[0].group_id}" + ("" if self.spec.group else f", sample {unit[0].index}")
        reason = f"timed out after {self.timeout:g}s" if status == "timeout" else f"failed: {value}"
        return [self.default] * len(unit), f"{reason} on {where}"

    def _report(self, first_failure: str, counts: Counter, n_samples: int) -> None:
        """One line per call, however many samples failed; a function that has failed on every sample it was
        ever given (not merely timed out) is broken, and the run stops instead of training on default rewards."""
        failed = counts["errors"] + counts["timeouts"]
        summary = (f"reward {self.spec.name}: {failed} of {n_samples} samples scored {self.default:g} "
                   f"({counts['errors']} errors, {counts['timeouts']} timeouts); first: {first_failure}")
        if not self._succeeded and counts["errors"] == n_samples:
            raise RewardFunctionBroken(f"{summary}. It has not returned a valid reward for any sample yet: fix the "
                                       f"reward function (--custom-rm-path / --rm-type) and start again")
        logger.warning(summary)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _clip(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _is_reward(value: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(value.get("score"), (int, float))
    return isinstance(value, (int, float))
