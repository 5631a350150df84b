"""Synchronous RL loop: generate -> reward -> filter -> train -> push weights, one stage after another.

    python -m async_rl.train --hf-checkpoint MODEL --prompt-data train.jsonl [flags]   (--async: async loop)
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from async_rl.cli import run_cli
from async_rl.config import Config, parse_config
from async_rl.session import TrainingSession
from async_rl.startup_checks import dry_run
from async_rl.stop_signal import StopSignal

logger = logging.getLogger(__name__)


def run(cfg: Config) -> None:
    with TrainingSession(cfg) as session, StopSignal() as stop:
        completed = session.start_step
        if session.resumed_rollout_state:
            state = session.resumed_rollout_state
            logger.warning("the checkpoint comes from an async run: the sync loop does not train its %d buffered "
                           "groups and %d prompts in generation; resume with --async to keep them",
                           len(state["buffer"]), len(state["retry_prompts"]))
        for step in range(session.start_step, cfg.rollout.num_rollout):
            metrics = session.evaluate() if session.should_evaluate(step) else {}
            step_start = time.perf_counter()

            samples, rollout_metrics = session.produce_rollout(step)
            metrics |= rollout_metrics

            with session.training_turn() as memory_metrics:
                metrics |= session.train(step, samples)
                stopping = stop.requested  # read once: a stop signal that comes later ends the next step
                if session.should_save(step + 1, stopping=stopping):  # while the trainer holds the GPU
                    session.save(step + 1, session.dataset.state_dict())
            metrics |= memory_metrics

            push_start = time.perf_counter()
            session.wait_weights(session.push_weights(version=step + 1), version=step + 1)
            metrics["perf/update_weights_time_s"] = time.perf_counter() - push_start
            metrics |= session.offload_trainer_weights()
            metrics["perf/step_time_s"] = time.perf_counter() - step_start
            session.metrics_logger.log(step, metrics)
            completed = step + 1
            if stopping:
                break
        else:
            if session.should_evaluate(cfg.rollout.num_rollout):
                session.metrics_logger.log(cfg.rollout.num_rollout, session.evaluate())
    if stop.requested:
        stop.exit(completed, session.last_checkpoint)


def main(argv: Sequence[str] | None = None) -> None:
    cfg, launch = parse_config(argv, prog="async_rl.train")
    if launch.dry_run:
        run_cli("async_rl.train", lambda: dry_run(cfg))
    elif launch.async_mode:
        from async_rl import train_async

        run_cli("async_rl.train", lambda: train_async.run(cfg))
    else:
        run_cli("async_rl.train", lambda: run(cfg))


if __name__ == "__main__":
    main()
