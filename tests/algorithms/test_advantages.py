import math

import torch

from async_rl.algorithms.advantages import (
    compute_advantages,
    grpo_advantages,
    overlong_penalty,
    reinforce_plus_plus_advantages,
    rloo_advantages,
)


def test_grpo_centres_and_scales_each_group_by_its_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    adv = grpo_advantages(rewards, group_size=3)
    # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: mean 2/3, same std
    std = math.sqrt(1 / 3)
    expected = [2 / 3 / std, -1 / 3 / std, -1 / 3 / std, -2 / 3 / std, 1 / 3 / std, 1 / 3 / std]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_grpo_without_std_only_centres():
    adv = grpo_advantages(torch.tensor([3.0, 1.0]), group_size=2, normalize_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]))


def test_all_equal_group_gives_zeros_not_nan():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), group_size=3)
    assert torch.equal(adv, torch.zeros(6))


def test_dr_grpo_centres_without_scaling():
    adv = compute_advantages("dr_grpo", torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_rloo_subtracts_the_mean_of_the_other_samples():
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 5.0]), group_size=3)
    expected = [1 - 0.0, 0 - 0.5, 0 - 0.5, 2 - 3.5, 2 - 3.5, 5 - 2.0]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_reinforce_plus_plus_normalises_over_the_batch_not_the_group():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = reinforce_plus_plus_advantages(rewards, group_size=2)
    std = torch.tensor([1.0, 1.0, 0.0, 0.0]).std().item()
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.5, -0.5, -0.5]) / (std + 1e-6))
    # with a group baseline, groups of equal rewards get zero advantage
    assert torch.equal(compute_advantages("reinforce_plus_plus_baseline", rewards, 2), torch.zeros(4))


def test_overlong_penalty_is_zero_then_linear_then_capped():
    lengths = torch.tensor([10, 16, 18, 20, 25])
    penalty = overlong_penalty(lengths, max_response_len=20, buffer_len=4, factor=1.0)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
