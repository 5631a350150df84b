"""`--deterministic-mode` (and `--check-invariants`, whose first-step check needs it) switch a GPU trainer's
process to deterministic kernels; a CPU trainer's kernels are deterministic already and stay as they are."""

import os

import pytest
import torch

from async_rl.config.sections import TrainConfig
from async_rl.trainer.policy_trainer import use_deterministic_kernels


@pytest.fixture
def restored(monkeypatch):
    for variable in ("CUBLAS_WORKSPACE_CONFIG", "NVTE_ALLOW_NONDETERMINISTIC_ALGO"):
        monkeypatch.delenv(variable, raising=False)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("cfg", [TrainConfig(deterministic_mode=True), TrainConfig(check_invariants=True)])
def test_a_gpu_trainer_asked_for_it_runs_deterministic_kernels(restored, cfg):
    assert use_deterministic_kernels(cfg, on_gpu=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    # Transformer Engine's attention (megatron refuses deterministic_mode without it) and cuBLAS
    assert os.environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0" and os.environ["CUBLAS_WORKSPACE_CONFIG"]


@pytest.mark.parametrize("cfg, on_gpu", [(TrainConfig(), True), (TrainConfig(check_invariants=True), False)])
def test_otherwise_nothing_changes(restored, cfg, on_gpu):
    assert not use_deterministic_kernels(cfg, on_gpu=on_gpu)
    assert not torch.are_deterministic_algorithms_enabled() and "NVTE_ALLOW_NONDETERMINISTIC_ALGO" not in os.environ
