"""A rollout engine whose process is killed is restarted with the current weights; its work is re-issued."""

import os
import re
import signal
import time

import ray
from ray._private.internal_api import memory_summary

from async_rl.config import parse_config
from async_rl.session import TrainingSession
from tests.conftest import run_flags


def test_killed_engine_is_restarted_and_the_batch_is_still_full(tiny_model, tmp_path):
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--rollout-num-engines", "2", evaluate=False))
    with TrainingSession(cfg) as session:
        samples, _ = session.produce_rollout(0)
        session.train(0, samples)
        ray.get(session.push_weights(version=1))
        victim = session.engine_pool.engines[1]
        os.kill(ray.get(victim.health.remote())["pid"], signal.SIGKILL)  # the fault: the process dies

        check_replaced_with_current_weights(session, 1, victim)


def check_replaced_with_current_weights(session: TrainingSession, rank: int, victim) -> None:
    """After engine `rank` (`victim`) died holding weight version 1, the next rollout replaces it and is whole."""
    samples, metrics = session.produce_rollout(0)
    assert metrics["rollout/engine_restarts"] == 1
    assert len(samples) == 16 and len({s.group_id for s in samples}) == 4  # no group lost, none twice
    assert {s.weight_version for s in samples} == {1}  # the replacement got the current weights
    replacement = session.engine_pool.engines[rank]
    assert replacement is not victim and ray.get(replacement.health.remote())["weight_version"] == 1


def object_store_objects(settle_s: float = 10.0) -> int:
    """Objects in this test's Ray object store (shared host memory), once frees in flight have landed."""
    deadline = time.monotonic() + settle_s
    address = ray.get_runtime_context().gcs_address  # not auto-detected: a parallel test worker may run a Ray too
    while True:
        summary = memory_summary(address=address, stats_only=True)
        count = int(re.search(r"Plasma memory usage \d+ MiB, (\d+) objects", summary).group(1))
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def test_weight_buckets_live_in_the_object_store_only_while_engines_load_them(tiny_model, tmp_path):
    """The engine pool keeps no copy of the weights in host memory: a held bucket is visible to the probe, and after a
    push and after refilling a replacement engine the object store is empty again."""
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--rollout-num-engines", "2", evaluate=False))
    with TrainingSession(cfg) as session:
        export_args = session.engine_pool.weight_sync.export_args
        held = next(iter(session.trainer.export_weight_buckets.options(num_returns="streaming").remote(*export_args)))
        assert object_store_objects(settle_s=0) >= 1
        del held
        ray.get(session.push_weights(version=1))
        assert object_store_objects() == 0
        session.engine_pool.weight_sync.restore(session.engine_pool.engines, 1)
        assert object_store_objects() == 0
        assert ray.get(session.engine_pool.engines[1].health.remote())["weight_version"] == 1
