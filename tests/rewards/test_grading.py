import argparse
import os
import signal
import time

import pytest

from async_rl.errors import UserInputError
from async_rl.sample import Sample
from rewards.grading import RewardFunctionBroken, RewardGrader
from rewards.registry import resolve_reward

ARGS = argparse.Namespace(rollout_batch_size=7)
PLUGINS = "tests.plugins.reward_plugins"


def samples(n, group_size=1, response="<think>x</think>\\boxed{4}", label="4"):
    return [Sample(prompt="p", prompt_tokens=[1], response=response, label=label, group_id=i // group_size, index=i)
            for i in range(n)]


def grade(spec, batch, **kwargs):
    grader = RewardGrader(spec, args=ARGS, **kwargs)
    try:
        return grader.grade(batch)
    finally:
        grader.close()


def test_rule_reward_runs_in_worker_processes():
    rewards, counts = grade(resolve_reward("deepscaler"), samples(6))
    assert rewards == [1.0] * 6 and counts["timeouts"] == counts["errors"] == 0


def test_sync_plugin_async_slime_plugin_and_group_plugin_load_unchanged():
    batch = samples(4, response="4")
    assert grade(resolve_reward("deepscaler", f"{PLUGINS}:exact_label"), batch)[0] == [1.0] * 4
    rewards, _ = grade(resolve_reward("deepscaler", f"{PLUGINS}:slime_style"), batch)
    assert rewards == [{"score": 1.0, "seen_batch": 7.0}] * 4
    group = samples(4, group_size=4)
    group[2].response = "4"
    rewards, _ = grade(resolve_reward("deepscaler", f"{PLUGINS}:group_best_of", group_rm=True), group)
    assert rewards == [0.0, 0.0, 1.0, 0.0]


def test_plugin_that_raises_or_hangs_is_counted_and_scored_default(caplog):
    start = time.perf_counter()
    rewards, counts = grade(resolve_reward("deepscaler", f"{PLUGINS}:flaky"), samples(6), timeout=1.0, default=-1.0)
    assert time.perf_counter() - start < 10
    assert rewards == [-1.0, -1.0, 1.0, -1.0, -1.0, 1.0]
    assert counts == {"errors": 2, "timeouts": 2}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "rewards.grading"]
    assert line == (f"reward --custom-rm-path {PLUGINS}:flaky: 4 of 6 samples scored -1 (2 errors, 2 timeouts); "
                    f"first: failed: ValueError: plugin bug on group 0, sample 0")


def test_a_worker_stuck_in_c_code_is_replaced_after_the_hard_deadline():
    spec = resolve_reward("deepscaler", f"{PLUGINS}:deaf_to_alarms")
    grader = RewardGrader(spec, args=ARGS, num_workers=1, timeout=0.5)
    try:
        start = time.perf_counter()
        rewards, counts = grader.grade(samples(1))
        assert time.perf_counter() - start < 10
        assert rewards == [0.0] and counts["timeouts"] == 1
        grader.spec = resolve_reward("deepscaler")  # the replacement pool grades normally
        assert grader.grade(samples(2))[0] == [1.0, 1.0]
    finally:
        grader.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_every_worker_ignores_stop_signals_before_the_pool_takes_work(signum):
    """Ctrl-C or a group SIGTERM (plain `timeout`, a scheduler) reaches every worker while the driver still wants
    its step graded: no worker, however recently started, may die of it (a dead worker breaks the pool)."""
    grader = RewardGrader(resolve_reward("deepscaler"), args=ARGS, num_workers=4)
    try:
        workers = list(grader._workers()._processes.values())
        assert len(workers) == 4
        for worker in workers:
            os.kill(worker.pid, signum)
        assert grader.grade(samples(8))[0] == [1.0] * 8
        assert all(worker.is_alive() for worker in workers)
    finally:
        grader.close()


def test_a_function_that_never_returns_a_reward_stops_the_run_in_one_line():
    with pytest.raises(RewardFunctionBroken) as stopped:
        grade(resolve_reward("deepscaler", f"{PLUGINS}:returns_nonsense"), samples(200))
    message = str(stopped.value)
    assert "\n" not in message and len(message) < 600
    assert message.startswith(f"reward --custom-rm-path {PLUGINS}:returns_nonsense: 200 of 200 samples scored 0 "
                              f"(200 errors, 0 timeouts); first: failed: returned 'yes', expected a float")
    assert "has not returned a valid reward for any sample yet" in message


def test_a_function_that_has_worked_only_warns_when_a_whole_batch_fails(caplog):
    grader = RewardGrader(resolve_reward("deepscaler", f"{PLUGINS}:exact_label"), args=ARGS)
    try:
        assert grader.grade(samples(2, response="4"))[0] == [1.0, 1.0]
        grader.spec = resolve_reward("deepscaler", f"{PLUGINS}:returns_nonsense")
        rewards, counts = grader.grade(samples(3))
        assert rewards == [0.0] * 3 and counts["errors"] == 3
    finally:
        grader.close()
    assert "3 of 3 samples scored 0 (3 errors, 0 timeouts)" in caplog.text


@pytest.mark.parametrize(
    "rm_type, path, message",
    [
        ("nope", None, "--rm-type: unknown reward 'nope'"),
        ("deepscaler", "no_such_module:fn", "--custom-rm-path: cannot import module 'no_such_module'"),
        ("deepscaler", f"{PLUGINS}:missing", "has no attribute 'missing'"),
        ("deepscaler", "just_a_name", "expected pkg.module:function"),
    ],
)
def test_bad_reward_names_are_clear_errors(rm_type, path, message):
    with pytest.raises(UserInputError, match=message):
        resolve_reward(rm_type, path)


def test_slime_dotted_paths_load_the_same_function():
    assert resolve_reward("deepscaler", f"{PLUGINS}.returns_nonsense").fn is resolve_reward(
        "deepscaler", f"{PLUGINS}:returns_nonsense").fn
