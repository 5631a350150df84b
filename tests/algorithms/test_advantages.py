import math

import torch

from async_rl.algorithms.advantages import grpo_advantages


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
