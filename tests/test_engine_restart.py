"""A rollout engine whose process is killed is restarted with the current weights; its work is re-issued."""

import os
import signal

import ray

from async_rl.config import parse_config
from async_rl.session import TrainingSession
from tests.conftest import run_flags


def test_killed_engine_is_restarted_and_the_batch_is_still_full(tiny_model, tmp_path):
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--rollout-num-engines", "2", evaluate=False))
    with TrainingSession(cfg) as session:
        samples, _ = session.produce_rollout(0)
        session.train(0, samples)
        ray.get(session.push_weights(version=1))
        victim = session.rollout.engines[1]
        os.kill(ray.get(victim.health.remote())["pid"], signal.SIGKILL)  # the fault: the process dies

        check_replaced_with_current_weights(session, 1, victim)


def check_replaced_with_current_weights(session: TrainingSession, rank: int, victim) -> None:
    """After engine `rank` (`victim`) died holding weight version 1, the next rollout replaces it and is whole."""
    samples, metrics = session.produce_rollout(0)
    assert metrics["rollout/engine_restarts"] == 1
    assert len(samples) == 16 and len({s.group_id for s in samples}) == 4  # no group lost, none twice
    assert {s.weight_version for s in samples} == {1}  # the replacement got the current weights
    replacement = session.rollout.engines[rank]
    assert replacement is not victim and ray.get(replacement.health.remote())["weight_version"] == 1
