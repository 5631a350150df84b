import math

import torch

from async_rl.algorithms.losses import kl_penalty, policy_loss


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_ppo_clip_with_clip_higher_matches_hand_values():
    # ratios e^0.5 (~1.65), e^-0.5 (~0.61), 1.0 ; advantages +1, -1, +2
    logp, old = t([[0.5, -0.5, 0.0]]), t([[0.0, 0.0, 0.0]])
    adv = t([[1.0, -1.0, 2.0]])
    loss, stats = policy_loss(logp, old, adv, t([[1, 1, 1]]), eps_clip=0.2, eps_clip_high=0.28)
    # token 1: max(-1.6487, -1.28) = -1.28 ; token 2: max(0.6065, 0.8) = 0.8 ; token 3: -2
    expected = (-1.28 + 0.8 - 2.0) / 3
    assert math.isclose(loss.item(), expected, rel_tol=1e-9)
    assert math.isclose(stats["clip_frac"].item(), 2 / 3, rel_tol=1e-9)


def test_masked_tokens_do_not_count():
    logp, old, adv = t([[0.1, 5.0]]), t([[0.0, 0.0]]), t([[1.0, 1.0]])
    loss, _ = policy_loss(logp, old, adv, t([[1, 0]]))
    assert math.isclose(loss.item(), -math.exp(0.1), rel_tol=1e-9)


def test_tis_weights_are_capped_and_detached():
    logp = t([[0.0, 0.0]]).requires_grad_()
    old = t([[0.0, 0.0]])
    rollout = t([[math.log(0.5), math.log(4.0)]])  # weights exp(old - rollout) = 2.0 and 0.25
    loss, stats = policy_loss(logp, old, t([[1.0, 1.0]]), t([[1, 1]]), rollout_log_probs=rollout, tis_cap=1.5)
    assert math.isclose(loss.item(), -(1.5 + 0.25) / 2, rel_tol=1e-9)
    assert math.isclose(stats["tis_capped_frac"].item(), 0.5)
    assert math.isclose(stats["tis_weight_max"].item(), 1.5)
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[-1.5 / 2, -0.25 / 2]]))


def test_sequence_mean_aggregations():
    logp = old = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    adv = t([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    token_mean, _ = policy_loss(logp, old, adv, mask, aggregation="token_mean")
    seq_mean, _ = policy_loss(logp, old, adv, mask, aggregation="seq_mean_token_mean")
    seq_sum, _ = policy_loss(logp, old, adv, mask, aggregation="seq_mean_token_sum")
    assert math.isclose(token_mean.item(), -(3 * 1 + 3) / 4)
    assert math.isclose(seq_mean.item(), -(1 + 3) / 2)
    assert math.isclose(seq_sum.item(), -(3 + 3) / 2)


def test_kl_estimators():
    logp, ref = t([0.2]), t([-0.3])  # log ratio 0.5
    assert math.isclose(kl_penalty(logp, ref, "k1").item(), 0.5)
    assert math.isclose(kl_penalty(logp, ref, "k2").item(), 0.125)
    assert math.isclose(kl_penalty(logp, ref, "k3").item(), math.exp(-0.5) + 0.5 - 1)
