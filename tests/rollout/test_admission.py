"""Admission control of the async producer: the staleness bound, and running groups counted at the filter's keep rate."""

from async_rl.rollout.dynamic_sampling import KeepRate, split_groups
from async_rl.rollout.producer import AdmissionControl, staleness_metrics, within_staleness
from async_rl.sample import Sample


def test_without_a_filter_running_groups_count_in_full():
    rule = AdmissionControl(batch_groups=32, max_staleness=1, max_running=48)
    # version 3: at most (1 + 3 + 1) * 32 = 160 groups accepted or running
    assert rule.capacity(version=3, accepted=128, running=0) == 32
    assert rule.capacity(version=3, accepted=128, running=20) == 12
    assert rule.capacity(version=3, accepted=150, running=10) == 0
    assert rule.capacity(version=3, accepted=160, running=0) == 0
    assert rule.capacity(version=9, accepted=0, running=40) == 8  # max_running caps a far-behind producer


def test_running_groups_count_at_the_keep_rate():
    rule = AdmissionControl(batch_groups=32, max_staleness=1, max_running=64)
    # room for 32 more accepted groups; with 60% kept, 54 running groups are expected to fill it
    assert rule.capacity(version=3, accepted=128, running=0, keep_rate=0.6) == 54
    assert rule.capacity(version=3, accepted=128, running=50, keep_rate=0.6) == 4
    assert rule.capacity(version=3, accepted=128, running=0, keep_rate=0.1) == 64  # still capped by max_running
    assert rule.capacity(version=3, accepted=128, running=0, keep_rate=0.0) == 64
    assert rule.capacity(version=3, accepted=161, running=0, keep_rate=0.5) == 0  # a surplus admits nothing more


def test_keep_rate_is_one_until_a_group_finishes_and_follows_the_recent_window():
    rate = KeepRate(window=4)
    assert rate.value == 1.0
    for kept in (True, False, False, False):
        rate.add(kept)
    assert rate.value == 0.25
    for kept in (True, True, True):
        rate.add(kept)
    assert rate.value == 0.75  # the first four are out of the window but one


def test_a_group_older_than_the_bound_is_dropped_whole():
    samples = [Sample(prompt="", prompt_tokens=[1], group_id=g, weight_version=v)
               for g, v in [(0, 5), (0, 5), (1, 3), (1, 4), (2, 4), (2, 4)]]
    groups = split_groups(samples)
    kept = [g for g in groups if within_staleness(g, version=5, max_staleness=1)]
    assert [s.group_id for g in kept for s in g] == [0, 0, 2, 2]
    assert staleness_metrics(samples, version=5)["rollout/staleness_max"] == 2
