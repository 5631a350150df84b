import dataclasses

import torch

from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from async_rl.rollout.engine import SamplingParams
from async_rl.sample import Sample


def rollout(tiny_model, tokenizer, n=8):
    engine = LocalEngine(str(tiny_model), seed=1)
    texts = ["12+34=", "56+78=", "7+8=", "40+40="]
    samples = [Sample(prompt=t, prompt_tokens=tokenizer(t, add_special_tokens=False)["input_ids"], group_id=i // 2)
               for i, t in enumerate((texts * n)[:n])]
    return engine.generate(samples, SamplingParams(max_new_tokens=24))


def advantages(n):
    return [1.0 if i % 2 else -1.0 for i in range(n)]


def params_of(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_the_trainer_applies_a_custom_tis_function(tiny_model, tokenizer):
    samples = rollout(tiny_model, tokenizer)
    cfg = TrainConfig(lr=1e-3, micro_batch_size=4, use_tis=True,
                      custom_tis_function_path="tests.plugins.tis_functions:halve")
    metrics = TorchTrainer(str(tiny_model), cfg, global_batch_size=8, temperature=1.0).train_step(
        samples, advantages(len(samples)))
    assert metrics["train/tis_custom_tokens"] > 0 and "train/tis_weight_mean" not in metrics


def test_one_training_step_changes_the_weights(tiny_model, tokenizer):
    samples = rollout(tiny_model, tokenizer)
    trainer = TorchTrainer(str(tiny_model), TrainConfig(lr=1e-3, micro_batch_size=4), global_batch_size=8, temperature=1.0)
    before = params_of(trainer)
    metrics = trainer.train_step(samples, advantages(len(samples)))
    after = params_of(trainer)
    assert trainer.version == 1
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # on-policy first step: the recomputed old log-probs are the rollout's, so the ratio starts at 1
    assert metrics["train/rollout_logprob_abs_diff"] < 1e-3
    assert metrics["mismatch/kl_k3"] < 1e-6 and metrics["mismatch/ess_frac"] > 1 - 1e-4
    assert metrics["mismatch/ratio_outside_frac"] == 0.0
    assert metrics["train/clip_frac"] == 0.0


# A key bias adds the same q.b_k to every logit of a query's softmax, which ignores it: its exact gradient is zero,
# so what it gets is rounding noise, which Adam's g / sqrt(v) scales into full-size steps that differ between CPUs
NOISE_ONLY = ("self_attn.k_proj.bias",)


def assert_same_update(got: torch.Tensor, ref: torch.Tensor, name: str, *, atol: float, rtol: float, max_step: float):
    """Weights after the same Adam steps: within `max_step` everywhere; within atol/rtol but for at most 0.1% of
    the elements (noise-level gradients of a few elements also become ~lr steps), except where the exact
    gradient is zero (`NOISE_ONLY`), which only the bound covers."""
    diff = (got - ref).abs()
    assert diff.max() <= max_step, name
    if not name.endswith(NOISE_ONLY):
        assert (diff > atol + rtol * ref.abs()).float().mean() < 1e-3, name


def accumulated_gradients(trainer: TorchTrainer, samples, advantages_: list[float]) -> dict[str, torch.Tensor]:
    """The gradient one global batch accumulates, before any optimizer step."""
    trainer.set_train_mode()
    [step] = trainer._split(samples, advantages_)
    trainer._fill_old_and_ref([step])
    trainer._accumulate(step)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_micro_batching_accumulates_the_gradient_of_one_batch(tiny_model, tokenizer):
    """token_mean normalises by the whole global batch's tokens, not by each micro-batch's: the accumulated
    gradients are equal (to float rounding of the summation order; no optimizer step amplifies it)."""
    samples = rollout(tiny_model, tokenizer)
    cfg = TrainConfig(lr=1e-3, micro_batch_size=8, use_tis=True)
    whole = TorchTrainer(str(tiny_model), cfg, global_batch_size=8, temperature=1.0)
    split = TorchTrainer(str(tiny_model), dataclasses.replace(cfg, micro_batch_size=2), global_batch_size=8, temperature=1.0)
    a, b = accumulated_gradients(whole, samples, advantages(8)), accumulated_gradients(split, samples, advantages(8))
    scale = max(g.abs().max() for g in a.values())
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6 * scale, rtol=1e-4, msg=name)


def test_exported_weights_carry_hugging_face_names_the_engine_accepts(tiny_model):
    trainer = TorchTrainer(str(tiny_model), TrainConfig(), global_batch_size=8, temperature=1.0)
    engine = LocalEngine(str(tiny_model))
    names = [n for n, _ in trainer.export_weights()]
    assert "model.embed_tokens.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    engine.update_weights(trainer.export_weights(), version=1)


def test_save_then_load_restores_weights_and_optimizer(tiny_model, tokenizer, tmp_path):
    samples = rollout(tiny_model, tokenizer)
    cfg = TrainConfig(lr=1e-3, micro_batch_size=8)
    trainer = TorchTrainer(str(tiny_model), cfg, global_batch_size=8, temperature=1.0)
    trainer.train_step(samples, advantages(8))
    trainer.save(str(tmp_path))
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "config.json").is_file()
    restored = TorchTrainer(str(tiny_model), cfg, global_batch_size=8, temperature=1.0)
    restored.load(str(tmp_path))
    assert restored.version == 1
    trainer.train_step(samples, advantages(8))
    restored.train_step(samples, advantages(8))
    a, b = params_of(trainer), params_of(restored)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_kl_to_the_reference_and_entropy_bonus_enter_the_update(tiny_model, tokenizer):
    samples = rollout(tiny_model, tokenizer)
    runs = {}
    for name, cfg in {
        "plain": TrainConfig(lr=1e-3, micro_batch_size=8),
        "kl_loss": TrainConfig(lr=1e-3, micro_batch_size=8, kl_loss_coef=0.5, use_kl_loss=True),
        "kl_reward": TrainConfig(lr=1e-3, micro_batch_size=8, kl_coef=0.5),
        "entropy": TrainConfig(lr=1e-3, micro_batch_size=8, entropy_coef=0.1),
    }.items():
        trainer = TorchTrainer(str(tiny_model), cfg, global_batch_size=8, temperature=1.0)
        trainer.train_step(samples, advantages(8))
        metrics = trainer.train_step(samples, advantages(8))  # second step: policy has moved from the reference
        runs[name] = (params_of(trainer), metrics)
    assert runs["kl_loss"][1]["train/kl_ref"] > 0 and "train/kl_ref" not in runs["plain"][1]
    assert runs["plain"][1]["train/entropy"] > 0
    for name in ("kl_loss", "kl_reward", "entropy"):
        assert any(not torch.equal(runs["plain"][0][n], runs[name][0][n]) for n in runs["plain"][0]), name


def test_a_non_finite_gradient_skips_the_optimizer_step(tiny_model, tokenizer):
    samples = rollout(tiny_model, tokenizer)
    trainer = TorchTrainer(str(tiny_model), TrainConfig(lr=1e-3, micro_batch_size=4), global_batch_size=4, temperature=1.0)
    before = params_of(trainer)
    metrics = trainer.train_step(samples, [float("nan")] * 4 + [1.0, -1.0, 1.0, -1.0])
    assert metrics["train/skipped_steps"] == 1  # the first global batch of 4; the second one trains
    after = params_of(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.isfinite(p).all() for p in after.values())


def test_token_budget_micro_batches_group_rows_of_similar_length():
    from async_rl.trainer.batch import micro_batch_indices

    samples = [Sample(prompt="", prompt_tokens=[1] * n, response_tokens=[2] * 4) for n in (10, 2, 30, 12, 3)]
    assert micro_batch_indices(samples, 2) == [[0, 1], [2, 3], [4]]
    # lengths 14, 6, 34, 16, 7; 40 padded tokens per micro-batch, longest first; 34 alone still runs
    assert micro_batch_indices(samples, 2, max_tokens=40) == [[2], [3, 0], [4, 1]]
    # packed back to back, a micro-batch costs the sum of its lengths: 16 + 14 + 7 fit in 40
    assert micro_batch_indices(samples, 2, max_tokens=40, packed=True) == [[2], [3, 0, 4], [1]]
    groups = micro_batch_indices(samples, 2, max_tokens=20)
    assert sorted(i for g in groups for i in g) == list(range(5))


def counting_forwards(trainer: TorchTrainer) -> list[bool]:
    """Record, for each log-prob forward of the policy, whether it ran with autograd (a training forward)."""
    calls, forward = [], trainer.forward_log_probs
    def counted(model, batch, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(model, batch, **kwargs)
    trainer.forward_log_probs = counted
    return calls


def test_one_optimizer_step_per_batch_takes_old_log_probs_from_its_training_forward(tiny_model, tokenizer):
    """The separate no-grad recompute is skipped and the update is the same, bit for bit, as with it."""
    samples = rollout(tiny_model, tokenizer)
    cfg = TrainConfig(lr=1e-3, micro_batch_size=4, use_tis=True)
    skipping = TorchTrainer(str(tiny_model), cfg, global_batch_size=8, temperature=1.0)
    recomputing = TorchTrainer(str(tiny_model), dataclasses.replace(cfg, check_invariants=True), global_batch_size=8,
                               temperature=1.0)
    skipped_calls, recomputed_calls = counting_forwards(skipping), counting_forwards(recomputing)
    a = skipping.train_step(samples, advantages(8))
    b = recomputing.train_step(samples, advantages(8))
    assert skipped_calls == [True, True] and recomputed_calls == [False, False, True, True]
    for key in ("train/loss", "train/grad_norm", "train/rollout_logprob_abs_diff", "train/tis_weight_mean"):
        assert a[key] == b[key], key
    after_a, after_b = params_of(skipping), params_of(recomputing)
    assert all(torch.equal(after_a[n], after_b[n]) for n in after_a)


def test_several_optimizer_steps_per_batch_recompute_old_log_probs_first(tiny_model, tokenizer):
    samples = rollout(tiny_model, tokenizer)
    trainer = TorchTrainer(str(tiny_model), TrainConfig(lr=1e-3, micro_batch_size=4), global_batch_size=4,
                           temperature=1.0)
    calls = counting_forwards(trainer)
    trainer.train_step(samples, advantages(8))
    assert calls == [False, False, True, True]  # the second step's old log-probs are the weights before the first
