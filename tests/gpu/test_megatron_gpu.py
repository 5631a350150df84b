"""The megatron trainer backend on one GPU against the torch backend: same weights, same batch, same step.

Run with `pytest -m gpu tests/gpu`; needs a CUDA GPU and megatron-core.
"""

import dataclasses
import importlib.util

import pytest
import torch

from async_rl.config.sections import MegatronConfig, TrainConfig
from async_rl.trainer.torch_trainer import TorchTrainer
from tests.trainer.test_torch_trainer import advantages, rollout

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("megatron") is None,
                       reason="needs a CUDA GPU and megatron-core"),
]

CFG = TrainConfig(lr=1e-4, micro_batch_size=4, use_tis=True)


def mean_abs_diff(a, b) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def one_step(trainer, samples):
    before = trainer.compute_log_probs(samples)
    metrics = trainer.train_step(samples, advantages(len(samples)))
    return before, metrics, trainer.compute_log_probs(samples)


@pytest.fixture(scope="module", params=["dense", "moe"])
def torch_step(request, tiny_model, tiny_moe_model, tokenizer):
    """The torch backend's step on the embedded (dense) model or a tiny Qwen3-MoE, with the same samples."""
    model = tiny_model if request.param == "dense" else tiny_moe_model
    samples = rollout(tiny_model, tokenizer, n=16)
    trainer = TorchTrainer(str(model), CFG, global_batch_size=8, temperature=1.0, device="cuda")
    return model, samples, one_step(trainer, samples)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_megatron_step_on_a_gpu_matches_the_torch_backend(torch_step, bf16):
    from async_rl.trainer.megatron.trainer import MegatronTrainer

    model, samples, (ref_before, ref_metrics, ref_after) = torch_step
    trainer = MegatronTrainer(str(model), CFG, dataclasses.replace(MegatronConfig(), bf16=bf16),
                              global_batch_size=8, temperature=1.0)
    try:
        before, metrics, after = one_step(trainer, samples)
    finally:
        trainer.close()
    report = {"logprob_mean_abs_diff_before": mean_abs_diff(before, ref_before),
              "logprob_mean_abs_diff_after": mean_abs_diff(after, ref_after),
              "loss": (metrics["train/loss"], ref_metrics["train/loss"]),
              "grad_norm": (metrics["train/grad_norm"], ref_metrics["train/grad_norm"])}
    print(f"\n{model.name} megatron {'bf16' if bf16 else 'fp32'} vs torch fp32: {report}")
    # bf16 weights and activations against fp32: per-token log-prob noise. The loss is a small difference of
    # large advantage-weighted sums (advantages are +-1), so it is compared in absolute terms; the gradient
    # norm of a 0.3M-parameter model in bf16 moves by ~10% (measured on an H100: 2.09 vs 1.88).
    tol = 0.05 if bf16 else 1e-4
    assert report["logprob_mean_abs_diff_before"] < tol and report["logprob_mean_abs_diff_after"] < tol
    assert metrics["train/loss"] == pytest.approx(ref_metrics["train/loss"], abs=2e-3 if bf16 else 1e-6)
    assert metrics["train/grad_norm"] == pytest.approx(ref_metrics["train/grad_norm"], rel=0.2 if bf16 else 1e-5)
    assert metrics["train/skipped_steps"] == 0


@pytest.mark.parametrize("recompute", [dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
                                       dict(recompute_granularity="selective")], ids=["full", "selective"])
def test_activation_recomputation_takes_the_same_step(torch_step, recompute):
    """`--recompute-*` goes to Megatron as is: recomputing activations in the backward pass changes nothing."""
    from async_rl.trainer.megatron.trainer import MegatronTrainer

    model, samples, (ref_before, ref_metrics, ref_after) = torch_step
    trainer = MegatronTrainer(str(model), CFG, dataclasses.replace(MegatronConfig(), **recompute),
                              global_batch_size=8, temperature=1.0)
    try:
        _, metrics, after = one_step(trainer, samples)
    finally:
        trainer.close()
    print(f"\n{model.name} recompute {recompute['recompute_granularity']}: loss {metrics['train/loss']} vs "
          f"{ref_metrics['train/loss']}, grad norm {metrics['train/grad_norm']} vs {ref_metrics['train/grad_norm']}")
    assert mean_abs_diff(after, ref_after) < 1e-4
    assert metrics["train/loss"] == pytest.approx(ref_metrics["train/loss"], abs=1e-6)
    assert metrics["train/grad_norm"] == pytest.approx(ref_metrics["train/grad_norm"], rel=1e-5)


@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["adam", "distributed-adam"])
def test_a_checkpoint_restores_the_optimizer_and_the_next_step_is_the_same(torch_step, tmp_path, distributed_optimizer):
    """--save / --load on a GPU: weights and Megatron's optimizer state (the distributed optimizer's shards too,
    through dist_checkpointing) come back, so the step after a resume equals the step without one."""
    from async_rl.trainer.megatron.trainer import MegatronTrainer

    model, samples, _ = torch_step
    mcfg = dataclasses.replace(MegatronConfig(), bf16=True, use_distributed_optimizer=distributed_optimizer)

    def trainer():
        return MegatronTrainer(str(model), CFG, mcfg, global_batch_size=8, temperature=1.0)

    first = trainer()
    try:
        first.train_step(samples, advantages(len(samples)))
        first.save(str(tmp_path / "ckpt"))
        continued = first.train_step(samples, advantages(len(samples)))
        continued_weights = {n: t.float().cpu() for n, t in first.export_weights()}
    finally:
        first.close()
    resumed = trainer()
    try:
        resumed.load(str(tmp_path / "ckpt"))
        after_load = resumed.train_step(samples, advantages(len(samples)))
        resumed_weights = {n: t.float().cpu() for n, t in resumed.export_weights()}
    finally:
        resumed.close()
    print(f"\n{model.name} {'distributed ' if distributed_optimizer else ''}adam, second step: continued loss "
          f"{continued['train/loss']:.9f} grad norm {continued['train/grad_norm']:.7f}; resumed loss "
          f"{after_load['train/loss']:.9f} grad norm {after_load['train/grad_norm']:.7f}")
    assert after_load["train/loss"] == continued["train/loss"]
    assert after_load["train/grad_norm"] == continued["train/grad_norm"]
    for name, tensor in continued_weights.items():  # Adam's moments came back: the second update is the same
        assert torch.equal(resumed_weights[name], tensor), name
