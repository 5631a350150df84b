"""Asynchronous RL loop: the rollout of step k+1 is produced in the background while the trainer trains step k.

Engines execute calls in order, so a weight push applies after the generate calls queued before it:
a trained sample is at most one weight version old in this loop (zero at the first step), and
`--max-staleness` drops (and counts) any group older than allowed.

    python -m async_rl.train_async --hf-checkpoint MODEL --prompt-data train.jsonl [flags]
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import ray

from async_rl.cli import run_cli
from async_rl.config import Config, parse_config
from async_rl.sample import Sample
from async_rl.session import TrainingSession

logger = logging.getLogger(__name__)


def drop_stale_groups(samples: list[Sample], version: int, max_staleness: int) -> tuple[list[Sample], dict[str, float]]:
    """Keep groups whose oldest sample is at most `max_staleness` versions behind `version`."""
    oldest: dict[int, int] = {}
    for s in samples:
        oldest[s.group_id] = min(oldest.get(s.group_id, s.weight_version), s.weight_version)
    kept = [s for s in samples if version - oldest[s.group_id] <= max_staleness]
    staleness = [version - s.weight_version for s in samples]
    return kept, {
        "rollout/staleness_mean": sum(staleness) / len(staleness),
        "rollout/staleness_max": float(max(staleness)),
        "rollout/stale_dropped": float(len(samples) - len(kept)),
    }


def run(cfg: Config) -> None:
    with TrainingSession(cfg) as session:
        in_flight, data_state = session.start_rollout()
        pushed: list[ray.ObjectRef] = []
        for step in range(session.start_step, cfg.rollout.num_rollout):
            metrics = session.evaluate() if session.should_evaluate(step) else {}
            step_start = time.perf_counter()

            samples, rollout_metrics = in_flight.result()
            metrics["perf/rollout_wait_s"] = time.perf_counter() - step_start
            ray.get(pushed)  # surfaces a failed weight push; long since applied by now
            resume_state = data_state  # a checkpoint must not skip the prompts of the rollout launched next
            if step + 1 < cfg.rollout.num_rollout:
                in_flight, data_state = session.start_rollout()  # generates while the trainer trains on `samples`
            metrics |= rollout_metrics
            if samples:
                samples, staleness = drop_stale_groups(samples, step, cfg.rollout.max_staleness)
                metrics |= staleness

            train_start = time.perf_counter()
            if samples:
                metrics |= session.train(samples)
            else:
                logger.warning("step %d: no group to train on; skipping the optimizer step", step)
            metrics["perf/train_time_s"] = time.perf_counter() - train_start

            push_start = time.perf_counter()
            pushed = session.push_weights(version=step + 1)
            metrics["perf/update_weights_time_s"] = time.perf_counter() - push_start
            metrics["perf/step_time_s"] = time.perf_counter() - step_start
            session.logger.log(step, metrics)

            if session.should_save(step + 1):
                session.save(step + 1, resume_state)
        ray.get(pushed)
        if session.should_evaluate(cfg.rollout.num_rollout):
            session.logger.log(cfg.rollout.num_rollout, session.evaluate())


def main(argv: Sequence[str] | None = None) -> None:
    cfg, _ = parse_config(argv, prog="async_rl.train_async", async_mode=True)
    run_cli("async_rl.train_async", lambda: run(cfg))


if __name__ == "__main__":
    main()
