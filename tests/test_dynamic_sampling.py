"""Dynamic sampling end to end: over-sample until enough groups pass the DAPO filter (real engines on Ray)."""

import logging

from async_rl.config import parse_config
from async_rl.rollout.dynamic_sampling import DynamicSampling, KeepRate
from async_rl.session import TrainingSession
from tests.conftest import run_flags

DAPO = "async_rl.rollout.filters:check_reward_nonzero_std"


def test_over_sampling_fills_the_batch_with_informative_groups(tiny_model, tmp_path):
    cfg, _ = parse_config(run_flags(
        tiny_model, tmp_path / "run", "--dynamic-sampling-filter-path", DAPO, "--over-sampling-batch-size", "8",
        "--rollout-batch-size", "3", "--micro-batch-size", "4",
    ))
    with TrainingSession(cfg) as session:
        samples, metrics = session.produce_rollout(0)
    groups = [samples[i : i + 4] for i in range(0, len(samples), 4)]
    assert len(groups) == 3 and metrics["rollout/groups_kept"] == 3
    assert all(len({s.score for s in g}) > 1 for g in groups)
    dropped = sum(v for k, v in metrics.items() if k.startswith("rollout/filter_drop_"))
    accounted = metrics["rollout/groups_kept"] + dropped + metrics.get("rollout/groups_surplus", 0)
    assert metrics["rollout/groups_generated"] == accounted
    assert metrics["rollout/groups_generated"] + metrics.get("rollout/groups_aborted", 0) == 8 * metrics["rollout/sampling_rounds"]


def test_a_batch_that_cannot_be_filled_warns_and_trains_on_what_passed(tiny_model, tmp_path, caplog):
    cfg, _ = parse_config(run_flags(
        tiny_model, tmp_path / "run", "--dynamic-sampling-filter-path", "tests.plugins.slime_style_filter:reject_everything",
        "--max-sampling-rounds", "2", "--num-rollout", "1",
    ))
    with TrainingSession(cfg) as session, caplog.at_level(logging.WARNING):
        samples, metrics = session.produce_rollout(0)
    assert samples == []
    assert metrics["rollout/filter_drop_filtered"] == 8 and metrics["rollout/sampling_rounds"] == 2
    assert "filled only 0 of 4 groups in 2 rounds" in caplog.text


def test_adaptive_rounds_fill_a_batch_in_one_round_once_the_keep_rate_is_known(tiny_model, tmp_path):
    """A filter keeping every other group: fixed rounds of 2 groups would need two rounds for every batch of 2;
    adaptive rounds learn the rate in the first batch and request enough for the second in one round."""
    cfg, _ = parse_config(run_flags(
        tiny_model, tmp_path / "run", "--dynamic-sampling-filter-path", "tests.plugins.slime_style_filter:keep_even_groups",
        "--rollout-batch-size", "2", "--over-sampling-batch-size", "2", "--micro-batch-size", "4", "--adaptive-over-sampling",
    ))
    with TrainingSession(cfg) as session:
        rounds = [session.produce_rollout(step)[1]["rollout/sampling_rounds"] for step in range(2)]
    assert rounds == [2, 1]


def test_an_adaptive_round_keeps_the_over_sampling_margin_within_the_fixed_rounds_budget():
    rate = KeepRate(window=10)
    sampling = DynamicSampling(lambda group: True, groups_per_round=48, max_rounds=4, keep_rate=rate, margin=48 / 32)
    assert sampling.round_size(missing=32) == 48  # nothing observed yet: a fixed round
    for kept in [True] * 4 + [False] * 6:
        sampling.observe(kept)
    assert sampling.round_size(missing=32) == 120  # 32 x 48/32 / 0.4
    assert sampling.round_size(missing=2) == 48  # never below a fixed round
    for _ in range(10):
        sampling.observe(False)
    assert sampling.round_size(missing=32) == 192  # nothing passes lately: all fixed rounds' worth at once
