"""The resume probe: exact under the layout it was recorded in, within FP32 reduction-order noise under another,
not compared in BF16 under another; a gradient norm that moved more than that stops the run."""

import pytest

from async_rl.invariants import InvariantViolation, check_probe, probe_tolerance

TP2 = {"world": 2, "tensor": 2, "expert": 1, "data": 1}
TP1 = {"world": 1, "tensor": 1, "expert": 1, "data": 1}
# measured on a CPU: the probe of a checkpoint saved at TP=2, recomputed after loading it at TP=1
SAVED = {"loss": -0.0025470466929800196, "grad_norm": 0.5836840011836234}
RELOADED_TP1 = {"loss": -0.00254705436302636, "grad_norm": 0.583683397680524}


def test_reduction_order_noise_passes_only_under_a_changed_layout():
    with pytest.raises(InvariantViolation, match="probe loss"):
        check_probe(SAVED, RELOADED_TP1, "ckpt", probe_tolerance(TP2, TP2, bf16=False))
    check_probe(SAVED, RELOADED_TP1, "ckpt", probe_tolerance(TP2, TP1, bf16=False))


def test_a_gradient_norm_that_moved_stops_the_run_under_a_changed_layout():
    moved = {**RELOADED_TP1, "grad_norm": SAVED["grad_norm"] * 1.001}
    with pytest.raises(InvariantViolation, match="probe grad_norm"):
        check_probe(SAVED, moved, "ckpt", probe_tolerance(TP2, TP1, bf16=False))


def test_bf16_under_another_layout_is_not_compared_but_under_its_own_is_exact():
    assert probe_tolerance(TP2, TP1, bf16=True) is None
    assert probe_tolerance(TP2, TP2, bf16=True) == probe_tolerance(TP1, TP1, bf16=False)
