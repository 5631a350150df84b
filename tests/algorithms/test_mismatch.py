"""Train-vs-rollout mismatch metrics on known ratios, and the alert that warns or stops."""

import math

import pytest
import torch

from async_rl.algorithms.mismatch import MismatchAlert, mismatch_metrics, mismatch_sums
from async_rl.errors import TrainingAborted


def metrics_of(trainer, rollout, mask):
    return mismatch_metrics(mismatch_sums(torch.tensor(trainer), torch.tensor(rollout), torch.tensor(mask)))


def test_on_policy_tokens_show_no_mismatch():
    m = metrics_of([[-1.0, -2.0, -0.5]], [[-1.0, -2.0, -0.5]], [[1, 1, 1]])
    assert m == {"mismatch/kl_k1": 0.0, "mismatch/kl_k3": 0.0, "mismatch/chi2": 0.0, "mismatch/ess_frac": 1.0,
                 "mismatch/ratio_outside_frac": 0.0}


def test_known_ratios_give_the_estimators_values_and_masked_tokens_do_not_count():
    rollout = [[-2.0, -2.0, -2.0, -2.0]]
    trainer = [[-2.0 + math.log(2), -2.0 + math.log(2), -2.0 + math.log(3), 5.0]]  # ratios 2, 2, 3; the last masked
    m = metrics_of(trainer, rollout, [[1, 1, 1, 0]])
    ratios = [2.0, 2.0, 3.0]
    assert m["mismatch/kl_k1"] == pytest.approx(-sum(map(math.log, ratios)) / 3)
    assert m["mismatch/kl_k3"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 3)
    assert m["mismatch/chi2"] == pytest.approx(sum((r - 1) ** 2 for r in ratios) / 3)
    assert m["mismatch/ess_frac"] == pytest.approx(sum(ratios) ** 2 / (3 * sum(r * r for r in ratios)))
    assert m["mismatch/ratio_outside_frac"] == pytest.approx(1 / 3)  # 3 lies outside [0.5, 2], 2 does not


def test_a_huge_log_ratio_stays_finite():
    m = metrics_of([[0.0]], [[-1e4]], [[1]])
    assert all(math.isfinite(v) for v in m.values())


def test_the_alert_needs_consecutive_steps_above_the_bound(caplog):
    alert = MismatchAlert(bound=0.1, steps=2, stop=False)
    for step, k3 in enumerate([0.2, 0.05, 0.2]):
        alert.observe(step, {"mismatch/kl_k3": k3})
    assert "above --mismatch-alert-k3" not in caplog.text
    alert.observe(3, {"mismatch/kl_k3": 0.3})
    assert "mismatch/kl_k3 above --mismatch-alert-k3 0.1 for 2 steps in a row (0.3 at step 3)" in caplog.text


def test_the_stopping_alert_ends_the_run_and_an_unset_bound_never_fires():
    with pytest.raises(TrainingAborted, match="--mismatch-alert-action stop"):
        MismatchAlert(bound=0.0, steps=1, stop=True).observe(0, {"mismatch/kl_k3": 0.01})
    MismatchAlert(bound=None, steps=1, stop=True).observe(0, {"mismatch/kl_k3": 100.0})
