"""The megatron trainer backend on one GPU against the torch backend: same weights, same batch, same step.

Run with `pytest -m gpu tests/gpu`; needs a CUDA GPU and megatron-core.
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import MegatronConfig, TrainConfig
from tests.backends.torch.test_torch_trainer import advantages, rollout
from tests.conftest import REPO

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("megatron") is None,
                       reason="needs a CUDA GPU and megatron-core"),
]

CFG = TrainConfig(lr=1e-4, micro_batch_size=4, use_tis=True)


def transformer_engine() -> bool:
    from async_rl.backends.megatron.model import transformer_engine_importable

    return transformer_engine_importable()


needs_te = pytest.mark.skipif(not transformer_engine(), reason="needs Transformer Engine")
TE = dict(transformer_impl="transformer_engine", bf16=True)
# per precision: its Megatron flags and how far it may be from the torch FP32 step: log-probs per token at the
# same weights and after the step (a BF16 update of a tiny model at lr 1e-4 rounds visibly), loss absolute, grad
# norm relative. The gradient norm of a 0.3M-parameter model in BF16 moves by ~10% (H100: 2.09 vs 1.88); FP8
# quantizes every GEMM input of a 64-wide model, and its norm moved by up to 1.8x on the H200.
PRECISIONS = {
    "local-fp32": (dict(transformer_impl="local"), (1e-4, 1e-4, 1e-6, 1e-5)),
    "local-bf16": (dict(transformer_impl="local", bf16=True), (0.05, 0.05, 2e-3, 0.2)),
    "te-bf16": (TE, (0.01, 0.05, 2e-3, 0.2)),
    "te-bf16-grouped-gemm": (TE | dict(moe_grouped_gemm=True), (0.01, 0.05, 2e-3, 0.2)),
    **{f"te-fp8-{recipe}": (TE | dict(fp8_format="e4m3", fp8_recipe=recipe), (0.03, 0.15, 0.02, 1.0))
       for recipe in ("delayed", "tensorwise", "blockwise")},
}


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


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_megatron_step_on_a_gpu_matches_the_torch_backend(torch_step, precision):
    from async_rl.backends.megatron.trainer import MegatronTrainer

    model, samples, (ref_before, ref_metrics, ref_after) = torch_step
    flags, (tol_before, tol_after, loss_tol, norm_tol) = PRECISIONS[precision]
    if flags.get("transformer_impl") == "transformer_engine" and not transformer_engine():
        pytest.skip("needs Transformer Engine")
    if flags.get("moe_grouped_gemm") and model.name == "tiny":
        pytest.skip("grouped GEMM is for the experts of a MoE model")
    trainer = MegatronTrainer(str(model), CFG, dataclasses.replace(MegatronConfig(), **flags),
                              global_batch_size=8, temperature=1.0)
    try:
        before, metrics, after = one_step(trainer, samples)
    finally:
        trainer.close()
    report = {"logprob_mean_abs_diff_before": mean_abs_diff(before, ref_before),
              "logprob_mean_abs_diff_after": mean_abs_diff(after, ref_after),
              "loss": (metrics["train/loss"], ref_metrics["train/loss"]),
              "grad_norm": (metrics["train/grad_norm"], ref_metrics["train/grad_norm"])}
    print(f"\n{model.name} megatron {precision} vs torch fp32: {report}")
    # The loss is a small difference of large advantage-weighted sums (advantages are +-1): compared in absolute terms
    assert report["logprob_mean_abs_diff_before"] < tol_before and report["logprob_mean_abs_diff_after"] < tol_after
    assert metrics["train/loss"] == pytest.approx(ref_metrics["train/loss"], abs=loss_tol)
    assert metrics["train/grad_norm"] == pytest.approx(ref_metrics["train/grad_norm"], rel=norm_tol)
    assert metrics["train/skipped_steps"] == 0


@needs_te
@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_log_probs_follow_the_weights_after_a_step(tiny_model, tokenizer, recipe):
    """Transformer Engine reuses a weight's FP8 copy until told a new step began: the log-probs after a step must
    be those of the new weights (an FP8 trainer that kept its first FP8 copy collapsed in the learning run)."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    samples = rollout(tiny_model, tokenizer, n=16)
    flags = TE | dict(fp8_format="e4m3", fp8_recipe=recipe)
    trainer = MegatronTrainer(str(tiny_model), dataclasses.replace(CFG, lr=3e-3),
                              dataclasses.replace(MegatronConfig(), **flags), global_batch_size=16, temperature=1.0)
    try:
        before, _, after = one_step(trainer, samples)
        trainer.model.set_is_first_microbatch()  # a fresh FP8 cast of the same weights
        recast = trainer.compute_log_probs(samples)
    finally:
        trainer.close()
    moved, stale = mean_abs_diff(before, after), mean_abs_diff(after, recast)
    print(f"\nfp8 {recipe}: log-probs moved {moved:.4f} by the step; after vs a fresh cast {stale:.5f}")
    assert moved > 0.02
    assert stale < 0.1 * moved


@pytest.mark.parametrize("recompute", [dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
                                       dict(recompute_granularity="selective")], ids=["full", "selective"])
def test_activation_recomputation_takes_the_same_step(torch_step, recompute):
    """`--recompute-*` goes to Megatron as is: recomputing activations in the backward pass changes nothing (checked
    in FP32 on the local spec, which matches the torch step to rounding; TE's FP32 GEMMs do not)."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    model, samples, (ref_before, ref_metrics, ref_after) = torch_step
    trainer = MegatronTrainer(str(model), CFG, dataclasses.replace(MegatronConfig(), transformer_impl="local", **recompute),
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


@pytest.mark.parametrize("impl", ["local", pytest.param("transformer_engine", marks=needs_te)])
@pytest.mark.parametrize("distributed_optimizer", [False, True], ids=["adam", "distributed-adam"])
def test_a_checkpoint_restores_the_optimizer_and_the_next_step_is_the_same(torch_step, tmp_path, distributed_optimizer,
                                                                           impl):
    """--save / --load on a GPU: weights and Megatron's optimizer state (the distributed optimizer's shards too,
    through dist_checkpointing) come back, so the step after a resume equals the step without one. With Transformer
    Engine installed megatron-core steps with TE's fused Adam, with the local spec too."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    model, samples, _ = torch_step
    mcfg = dataclasses.replace(MegatronConfig(), bf16=True, use_distributed_optimizer=distributed_optimizer,
                               transformer_impl=impl)

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
    print(f"\n{model.name} {impl} {'distributed ' if distributed_optimizer else ''}adam, second step: continued loss "
          f"{continued['train/loss']:.9f} grad norm {continued['train/grad_norm']:.7f}; resumed loss "
          f"{after_load['train/loss']:.9f} grad norm {after_load['train/grad_norm']:.7f}")
    assert after_load["train/loss"] == continued["train/loss"]
    assert after_load["train/grad_norm"] == continued["train/grad_norm"]
    for name, tensor in continued_weights.items():  # Adam's moments came back: the second update is the same
        assert torch.equal(resumed_weights[name], tensor), name


@needs_te
def test_packed_micro_batches_give_the_log_probs_of_padded_ones(torch_step):
    """THD packing (rows back to back, attention restarting at each) against right-padded rows, same TE model."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    model, samples, _ = torch_step
    trainer = MegatronTrainer(str(model), CFG, dataclasses.replace(MegatronConfig(), **TE), global_batch_size=8,
                              temperature=1.0)
    try:
        assert trainer.packed
        packed = trainer.compute_log_probs(samples)
        trainer.packed = False
        padded = trainer.compute_log_probs(samples)
    finally:
        trainer.close()
    worst = max(abs(x - y) for a, b in zip(packed, padded) for x, y in zip(a, b))
    lengths = sorted({len(s.prompt_tokens) + s.response_length for s in samples})
    print(f"\n{model.name} packed vs padded (lengths {lengths}): mean {mean_abs_diff(packed, padded):.2e}, max {worst:.2e}")
    assert len(lengths) > 1  # rows of different lengths, so packing and padding differ
    assert [len(r) for r in packed] == [len(r) for r in padded]
    assert mean_abs_diff(packed, padded) < 2e-3 and worst < 0.03  # BF16: two attention kernels' rounding


def _convert(tool: str, *args: str) -> None:
    """A converter run as on a login node: no GPU visible, so it builds the local spec."""
    subprocess.run([sys.executable, f"tools/{tool}", *args], cwd=REPO, check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)


@needs_te
def test_one_checkpoint_layout_for_both_layer_specs(torch_step, tmp_path):
    """The CPU converter's torch_dist (local spec) loads into the TE trainer, and the TE trainer's checkpoint
    converts back to Hugging Face on a CPU, tensor for tensor."""
    from safetensors.torch import load_file

    from async_rl.backends.megatron.model_checkpoint import load_model_checkpoint
    from async_rl.backends.megatron.trainer import MegatronTrainer

    model, samples, _ = torch_step
    _convert("convert_hf_to_torch_dist.py", "--hf-checkpoint", str(model), "--save", str(tmp_path / "from_cpu"))
    trainer = MegatronTrainer(str(model), CFG, dataclasses.replace(MegatronConfig(), **TE), global_batch_size=8,
                              temperature=1.0)
    try:
        built = {n: t.clone() for n, t in trainer.export_weights()}
        with torch.no_grad():
            for p in trainer.gpt.parameters():
                p.zero_()
        load_model_checkpoint(trainer.gpt, str(tmp_path / "from_cpu"))
        loaded = {n: t.clone() for n, t in trainer.export_weights()}  # views of parameters the step moves
        trainer.train_step(samples, advantages(len(samples)))
        trained = {n: t.cpu() for n, t in trainer.export_weights()}
        trainer.save(str(tmp_path / "te"))
    finally:
        trainer.close()
    assert set(loaded) == set(built) and all(torch.equal(loaded[n], built[n]) for n in built)
    _convert("convert_torch_dist_to_hf.py", "--input-dir", str(tmp_path / "te" / "megatron"), "--output-dir",
             str(tmp_path / "hf"), "--origin-hf-dir", str(model))
    back = load_file(tmp_path / "hf" / "model.safetensors")
    assert set(back) == set(trained)
    assert all(torch.equal(back[n], t.to(back[n].dtype)) for n, t in trained.items())
    print(f"\n{model.name}: CPU torch_dist -> TE trainer -> CPU HF, {len(back)} tensors equal")


def training_state(trainer) -> dict[str, torch.Tensor]:
    """Everything a step reads: model weights, the optimizer's FP32 main weights and its moments (host copies)."""
    state = {f"model.{n}": p.detach().cpu().clone() for n, p in trainer.gpt.named_parameters()}
    inner = trainer.optimizer.inner
    for i, opt in enumerate(getattr(inner, "chained_optimizers", [inner])):
        params = [p for group in opt.optimizer.param_groups for p in group["params"]]
        for j, p in enumerate(params):
            state[f"opt{i}.main.{j}"] = p.detach().cpu().clone()
            for key, value in opt.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    state[f"opt{i}.{key}.{j}"] = value.detach().cpu().clone()
    return state


@pytest.mark.parametrize("optimizer", ["adam", "distributed", "distributed-fp32"])
@pytest.mark.parametrize("impl", ["local", pytest.param("transformer_engine", marks=needs_te)])
def test_offloading_between_steps_frees_the_gpu_and_restores_every_bit(torch_step, impl, optimizer):
    """`--offload-train`: gradients, optimizer state and weights leave the GPU after a step and come back bit for bit
    (two trainers cannot be compared step for step: megatron's backward is not deterministic), and the next step
    trains on them. The second cycle refills the first one's page-locked host buffers in place with the new values.
    The distributed optimizer keeps the weights in flat parameter buffers that move whole; in FP32 its main weights
    are views of those buffers too."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    model, samples, _ = torch_step
    mcfg = dataclasses.replace(MegatronConfig(), bf16=optimizer != "distributed-fp32", transformer_impl=impl,
                               use_distributed_optimizer=optimizer != "adam")
    trainer = MegatronTrainer(str(model), CFG, mcfg, global_batch_size=8, temperature=1.0)
    cycles, losses = [], []
    try:
        for _ in range(2):
            losses.append(trainer.train_step(samples, advantages(len(samples)))["train/loss"])
            torch.cuda.synchronize()
            before, resident = training_state(trainer), torch.cuda.memory_allocated()
            moved = trainer.offload(weights=False) | {"weights": trainer.offload(weights=True)}
            offloaded = torch.cuda.memory_allocated()
            buffers = {key: (b.data_ptr(), b.is_pinned()) for key, b in trainer.offloader.stash.buffers.items()}
            moved["back"] = trainer.onload()
            cycles.append((before, training_state(trainer), resident - offloaded, buffers, moved))
            assert all(p.is_cuda for p in trainer.gpt.parameters())
        losses.append(trainer.train_step(samples, advantages(len(samples)))["train/loss"])
    finally:
        trainer.close()
    params = sum(p.numel() for p in trainer.gpt.parameters())
    for n, (before, after, freed, buffers, moved) in enumerate(cycles):
        print(f"\n{model.name} {impl} offload {n + 1}: {freed / 2**20:.1f} MiB freed ({params / 1e6:.2f}M parameters); {moved}")
        # BF16 weights + FP32 main weights + two Adam moments + the FP32 gradient buffer: 18 bytes per parameter;
        # in FP32 the distributed optimizer's main weights are the weights: 16
        assert freed >= 0.9 * (16 if optimizer == "distributed-fp32" else 18) * params
        assert set(after) == set(before) and len(before) > len(list(trainer.gpt.parameters()))
        for name, tensor in before.items():
            assert torch.equal(after[name], tensor), (n, name)
        assert all(pinned for _, pinned in buffers.values())
    assert cycles[1][3] == cycles[0][3]  # the same host buffers, not new ones
    # the step between the cycles changed the state, so the second cycle's equality shows the buffers were refilled
    assert any(not torch.equal(cycles[1][0][k], cycles[0][0][k]) for k in cycles[0][0])
    assert len(set(losses)) == 3 and all(torch.isfinite(torch.tensor(losses)))


@needs_te
@pytest.mark.parametrize("fp8", [False, True])
def test_deterministic_kernels_make_two_forward_passes_of_a_moe_batch_bit_identical(tiny_model, tiny_moe_model,
                                                                                    tokenizer, fp8, monkeypatch):
    """`--check-invariants` asks the first step's PPO ratio to be exactly 1, i.e. two forward passes over one batch
    to agree bit for bit. Megatron's MoE layer sums each token's expert outputs with atomics unless torch runs its
    deterministic algorithms (`--deterministic-mode`, on under `--check-invariants`). Prints the largest difference
    without them, which the recipe-twin run (FP8, grouped GEMM) saw as a ratio 0.09 away from 1."""
    from async_rl.backends.megatron.trainer import MegatronTrainer

    for variable in ("CUBLAS_WORKSPACE_CONFIG", "NVTE_ALLOW_NONDETERMINISTIC_ALGO"):
        monkeypatch.delenv(variable, raising=False)  # restored after the test, as torch's switch is in `finally`
    samples = rollout(tiny_model, tokenizer, n=16)
    flags = dict(TE, moe_grouped_gemm=True) | (dict(fp8_format="e4m3", fp8_recipe="tensorwise") if fp8 else {})
    passes = {}
    for deterministic in (False, True):
        trainer = MegatronTrainer(str(tiny_moe_model), dataclasses.replace(CFG, deterministic_mode=deterministic),
                                  dataclasses.replace(MegatronConfig(), **flags), global_batch_size=8, temperature=1.0)
        try:
            trainer.set_train_mode()
            passes[deterministic] = [trainer.compute_log_probs(samples) for _ in range(3)]
        finally:
            trainer.close()
            torch.use_deterministic_algorithms(False)
    loose = max(abs(a - b) for other in passes[False][1:] for x, y in zip(passes[False][0], other) for a, b in zip(x, y))
    print(f"\nlargest log-prob difference between forward passes without deterministic kernels: {loose:.3g}")
    assert passes[True][1] == passes[True][0] and passes[True][2] == passes[True][0]
