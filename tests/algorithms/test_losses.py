import math

import torch

from async_rl.algorithms.losses import importance_weights, kl_penalty, policy_loss


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
    assert math.isclose(kl_penalty(logp, ref, "low_var_kl").item(), math.exp(-0.5) + 0.5 - 1)
    far = kl_penalty(t([-20.0]), t([0.0]), "low_var_kl")  # k3 = e^20 - 21, clamped
    assert far.item() == 10.0


def test_dual_clip_bounds_negative_advantage_tokens():
    # ratio e^2 ~ 7.39 with A = -1: PPO gives max(7.39, 1.2) = 7.39; dual-clip c = 3 bounds it at 3
    logp, old = t([[2.0, 2.0]]), t([[0.0, 0.0]])
    loss, stats = policy_loss(logp, old, t([[-1.0, 1.0]]), t([[1, 1]]), eps_clip_c=3.0)
    # token 2 (A = +1): max(-7.39, -1.2) = -1.2, untouched by dual-clip
    assert math.isclose(loss.item(), (3.0 - 1.2) / 2, rel_tol=1e-9)
    assert math.isclose(stats["dual_clip_frac"].item(), 0.5)


def test_sequence_and_geometric_level_weights():
    old = t([[0.0, 0.0, 0.0]])
    rollout = t([[-0.2, -0.4, 0.0]])  # token log-ratios 0.2, 0.4, (masked)
    mask = t([[1, 1, 0]])
    seq, _ = importance_weights(old, rollout, mask, upper=10.0, level="sequence")
    geo, _ = importance_weights(old, rollout, mask, upper=10.0, level="geometric")
    assert torch.allclose(seq[0, :2], torch.full((2,), math.exp(0.6), dtype=torch.float64))
    assert torch.allclose(geo[0, :2], torch.full((2,), math.exp(0.3), dtype=torch.float64))


def test_mask_mode_zeroes_out_of_bounds_tokens_and_keeps_the_ratio_elsewhere():
    old = t([[0.0, 0.0, 0.0]])
    rollout = t([[-math.log(3.0), 0.0, math.log(4.0)]])  # ratios 3, 1, 0.25
    weights, stats = importance_weights(old, rollout, t([[1, 1, 1]]), upper=2.0, lower=0.5, mode="mask")
    torch.testing.assert_close(weights, t([[0.0, 1.0, 0.0]]))
    assert math.isclose(stats["tis_masked_frac"].item(), 2 / 3)


def test_icepop_masks_like_mask_mode():
    old, rollout, mask = t([[0.0, 0.0, 0.0]]), t([[-math.log(6.0), -math.log(4.0), math.log(2.5)]]), t([[1, 1, 1]])
    icepop, stats = importance_weights(old, rollout, mask, upper=5.0, lower=0.5, mode="icepop")
    masked, _ = importance_weights(old, rollout, mask, upper=5.0, lower=0.5, mode="mask")
    torch.testing.assert_close(icepop, masked)
    torch.testing.assert_close(icepop, t([[0.0, 4.0, 0.0]]))  # ratios 6 and 0.4 lie outside [0.5, 5]
    assert math.isclose(stats["tis_masked_frac"].item(), 2 / 3)


def test_a_custom_tis_function_replaces_the_built_in_weights():
    from tests.plugins.tis_functions import halve

    log_probs, old, adv, mask = t([[-1.0, -2.0]]), t([[-1.1, -1.9]]), t([[1.0, 1.0]]), t([[1, 1]])
    plain, _ = policy_loss(log_probs, old, adv, mask)
    halved, stats = policy_loss(log_probs, old, adv, mask, rollout_log_probs=t([[-5.0, -0.1]]), tis_cap=2.0,
                                tis_function=halve)
    torch.testing.assert_close(halved, plain / 2)
    assert stats["tis_custom_tokens"].item() == 2


def test_extreme_sequence_ratios_stay_finite():
    old = t([[0.0] * 50])
    rollout = t([[-30.0] * 50])  # sequence log-ratio 1500 overflows exp
    weights, _ = importance_weights(old, rollout, t([[1] * 50]), upper=2.0, level="sequence")
    assert torch.equal(weights, torch.full_like(weights, 2.0))
    loss, _ = policy_loss(t([[0.0] * 50]), old, t([[1.0] * 50]), t([[1] * 50]), rollout_log_probs=rollout,
                          tis_cap=2.0, tis_level="sequence")
    assert math.isfinite(loss.item())


def test_rows_without_tokens_contribute_nothing():
    logp = old = t([[0.0, 0.0], [0.0, 0.0]])
    adv = t([[1.0, 1.0], [5.0, 5.0]])
    mask = t([[1, 1], [0, 0]])
    for aggregation in ("token_mean", "seq_mean_token_mean"):
        loss, _ = policy_loss(logp, old, adv, mask, aggregation=aggregation)
        assert math.isfinite(loss.item())
    assert policy_loss(logp, old, adv, mask)[0].item() == -1.0


def test_token_mean_over_micro_batches_matches_the_whole_batch_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    old, adv = torch.randn(6, 5, dtype=torch.float64) * 0.1, torch.randn(6, 5, dtype=torch.float64)
    mask = (torch.rand(6, 5) > 0.3).double()
    loss, _ = policy_loss(logits, old, adv, mask)
    (whole,) = torch.autograd.grad(loss, logits)
    total, parts = mask.sum(), []
    for rows in (slice(0, 2), slice(2, 6)):  # unequal micro-batches, unequal token counts
        micro, _ = policy_loss(logits[rows], old[rows], adv[rows], mask[rows])
        parts.append(micro * mask[rows].sum() / total)
    (split,) = torch.autograd.grad(sum(parts), logits)
    torch.testing.assert_close(split, whole)


def test_gspo_clips_the_length_normalised_sequence_ratio_by_hand():
    # sequence 1: token log-ratios 0.1 and 0.3, s = e^0.2 = 1.2214 (inside [0.8, 1.28]), A = +1 -> loss -s
    # sequence 2: one token, log-ratio 0.5, s = e^0.5 = 1.6487, A = -1 -> max(1.6487, 1.28) = 1.6487 (unclipped)
    logp = t([[0.1, 0.3], [0.5, 0.0]]).requires_grad_()
    adv, mask = t([[1.0, 1.0], [-1.0, -1.0]]), t([[1, 1], [1, 0]])
    loss, stats = policy_loss(logp, t([[0.0, 0.0], [0.0, 0.0]]), adv, mask, eps_clip=0.2, eps_clip_high=0.28,
                              aggregation="seq_mean_token_mean", kind="gspo")
    assert math.isclose(loss.item(), (-math.exp(0.2) + math.exp(0.5)) / 2, rel_tol=1e-12)
    loss.backward()
    # d/dlogp_t of the mean over 2 sequences of -A s: -A s / length / 2 for each of the sequence's tokens
    expected = t([[-math.exp(0.2) / 4, -math.exp(0.2) / 4], [math.exp(0.5) / 2, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
    assert stats["clip_frac"].item() == 0.0


def test_gspo_past_the_bound_has_no_gradient():
    logp = t([[0.4, 0.4]]).requires_grad_()  # s = e^0.4 = 1.49 > 1.28 with A > 0: clipped
    loss, stats = policy_loss(logp, t([[0.0, 0.0]]), t([[1.0, 1.0]]), t([[1, 1]]), eps_clip_high=0.28, kind="gspo")
    loss.backward()
    assert math.isclose(loss.item(), -1.28) and stats["clip_frac"].item() == 1.0
    assert torch.equal(logp.grad, torch.zeros_like(logp))


def test_cispo_weighs_reinforce_by_the_detached_ratio_clipped_from_above():
    # ratios e^0.1 = 1.1052 (kept) and e^0.5 = 1.6487 (capped at 1.28); advantages +1, +1
    logp = t([[0.1, 0.5]]).requires_grad_()
    loss, stats = policy_loss(logp, t([[0.0, 0.0]]), t([[1.0, 1.0]]), t([[1, 1]]), eps_clip=0.2, eps_clip_high=0.28,
                              kind="cispo")
    assert math.isclose(loss.item(), -(math.exp(0.1) * 0.1 + 1.28 * 0.5) / 2, rel_tol=1e-12)
    loss.backward()
    # the clipped token keeps its gradient (PPO would give it none): -A w / 2
    torch.testing.assert_close(logp.grad, t([[-math.exp(0.1) / 2, -1.28 / 2]]))
    assert stats["clip_frac"].item() == 0.5
    # a ratio below 1 is not clipped from below
    low, _ = policy_loss(t([[-1.0]]), t([[0.0]]), t([[1.0]]), t([[1]]), kind="cispo")
    assert math.isclose(low.item(), math.exp(-1.0) * 1.0, rel_tol=1e-12)
