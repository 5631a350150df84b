import argparse

from async_rl.rollout.filters import FilterResult, check_reward_nonzero_std, load_group_filter
from async_rl.sample import Sample


def group(*rewards):
    return [Sample(prompt="", prompt_tokens=[1], reward=r) for r in rewards]


def test_dapo_filter_drops_groups_of_equal_reward_with_a_reason():
    assert check_reward_nonzero_std(group(1.0, 0.0, 1.0)) == FilterResult(True)
    assert check_reward_nonzero_std(group(1.0, 1.0)) == FilterResult(False, "all_correct")
    assert check_reward_nonzero_std(group(0.0, 0.0)) == FilterResult(False, "zero_std")
    assert check_reward_nonzero_std(group({"score": 1.0}, {"score": 0.0})).keep


def test_slime_style_filter_loads_unchanged_and_receives_the_flags():
    fn = load_group_filter("tests.plugins.slime_style_filter:keep_if_any_correct",
                           argparse.Namespace(n_samples_per_prompt=2))
    assert fn(group(0.0, 1.0)) == FilterResult(True)
    assert fn(group(0.0, 0.0)) == FilterResult(False, "none_correct")


def test_plain_boolean_filter_gets_a_generic_reason():
    fn = load_group_filter("tests.plugins.slime_style_filter:reject_everything", argparse.Namespace())
    assert fn(group(1.0)) == FilterResult(False, "filtered")
