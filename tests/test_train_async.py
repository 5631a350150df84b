"""End-to-end run of the asynchronous loop: samples are one version stale, and nothing is dropped."""

import json

from async_rl import train_async
from async_rl.sample import Sample
from async_rl.train_async import drop_stale_groups
from tests.conftest import run_flags


def test_async_run_trains_on_one_version_old_samples(tiny_model, tmp_path):
    out = tmp_path / "run"
    train_async.main(run_flags(tiny_model, out, "--num-rollout", "3"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_time_s" in r]
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert [r["rollout/staleness_max"] for r in steps] == [0.0, 1.0, 1.0]
    assert all(r["rollout/stale_dropped"] == 0 and "train/loss" in r for r in steps)
    assert "eval/reward_mean" in rows[-1] and rows[-1]["step"] == 3


def test_groups_older_than_the_bound_are_dropped_whole_and_counted():
    samples = [Sample(prompt="", prompt_tokens=[1], group_id=g, weight_version=v)
               for g, v in [(0, 5), (0, 5), (1, 3), (1, 4), (2, 4), (2, 4)]]
    kept, stats = drop_stale_groups(samples, version=5, max_staleness=1)
    assert [s.group_id for s in kept] == [0, 0, 2, 2]
    assert stats["rollout/stale_dropped"] == 2
    assert stats["rollout/staleness_max"] == 2
