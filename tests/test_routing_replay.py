"""--use-routing-replay (R3): the local engine records each token's experts, the torch trainer routes with them, and
the trainer-vs-rollout log-prob mismatch of an FP8-emulated MoE rollout falls to the level of a dense model."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config import parse_config
from async_rl.config.sections import TrainConfig
from async_rl.rollout.engine import SamplingParams
from async_rl.routing_replay import NO_REPLAY, RoutingRecorder, moe_routers, replay_routing
from async_rl.sample import Sample
from async_rl.startup_checks import startup_problems
from tests.conftest import REPO, run_flags

SHAPE = dict(vocab_size=262, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, tie_word_embeddings=False)
PROMPTS = ["12+34=", "70+18=", "99+99=", "45+61="] * 4
needs_megatron = pytest.mark.skipif(importlib.util.find_spec("megatron") is None, reason="needs megatron-core")


def build(out, tokenizer, moe: bool):
    """A random tiny Qwen3, MoE (4 experts, top 2) or dense with the same active MLP width; the MLPs are scaled up so
    that they, and with them the routing, matter to the output."""
    torch.manual_seed(0)
    if moe:
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=32, num_experts=4,
                                                   num_experts_per_tok=2, norm_topk_prob=True, **SHAPE))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(intermediate_size=64, **SHAPE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mlp." in name and not name.endswith("mlp.gate.weight"):
                p.mul_(5.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("routing")
    return build(root / "moe", tokenizer, moe=True), build(root / "dense", tokenizer, moe=False)


def rollout(model, tokenizer, fp8, record=True):
    engine = LocalEngine(str(model), seed=0, fp8=fp8, record_routing=record)
    prompts = [Sample(prompt=t, prompt_tokens=tokenizer(t, add_special_tokens=False)["input_ids"], group_id=i)
               for i, t in enumerate(PROMPTS)]
    return engine.generate(prompts, SamplingParams(max_new_tokens=32))


def mismatch(model, samples, replay: bool, backend: str = "torch") -> torch.Tensor:
    """|trainer log-prob - rollout log-prob| of every response token."""
    cfg = TrainConfig(micro_batch_size=8, use_routing_replay=replay)
    if backend == "torch":
        trainer = TorchTrainer(str(model), cfg, global_batch_size=len(samples), temperature=1.0)
        log_probs = trainer.compute_log_probs(samples)
    else:
        from async_rl.backends.megatron.trainer import MegatronTrainer
        from async_rl.config.sections import MegatronConfig

        trainer = MegatronTrainer(str(model), cfg, MegatronConfig(), global_batch_size=len(samples), temperature=1.0)
        try:
            log_probs = trainer.compute_log_probs(samples)
        finally:
            trainer.close()
    return torch.cat([(torch.tensor(mine) - torch.tensor(s.rollout_log_probs)).abs()
                      for mine, s in zip(log_probs, samples)])


def test_the_engine_records_the_experts_of_every_position_but_the_last(models, tokenizer):
    moe, _ = models
    samples = rollout(moe, tokenizer, fp8=None)
    model = TorchTrainer(str(moe), TrainConfig(), global_batch_size=1, temperature=1.0).model
    recorder = RoutingRecorder(model)
    for s in samples:
        assert s.routed_experts.shape == (len(s.tokens) - 1, 2, 2) and s.routed_experts.dtype == torch.int16
        recorder.start()
        with torch.no_grad():
            model(input_ids=torch.tensor([s.tokens]))
        own = recorder.call(0)[:-1]  # the trainer's own routing of the same tokens, one sequence, no padding
        assert (own.sort(-1).values == s.routed_experts.sort(-1).values).float().mean() > 0.99


@pytest.mark.parametrize("backend", ["torch", pytest.param("megatron", marks=needs_megatron)])
def test_without_quantization_replay_reproduces_the_rollout_log_probs(models, tokenizer, backend):
    moe, _ = models
    samples = rollout(moe, tokenizer, fp8=None)
    assert float(mismatch(moe, samples, replay=True, backend=backend).max()) < 1e-4


@needs_megatron
def test_megatron_routers_take_the_replayed_experts(models, tokenizer):
    """Megatron's own RouterReplay, fed in the order its routers see the tokens: the FP8 rollout's flipped tokens
    are gone as they are with the torch trainer."""
    moe, _ = models
    samples = rollout(moe, tokenizer, fp8="block")
    without, replayed = mismatch(moe, samples, False, "megatron"), mismatch(moe, samples, True, "megatron")
    torch.testing.assert_close(replayed, mismatch(moe, samples, True, "torch"), atol=1e-4, rtol=0)
    assert replayed.max() < 0.5 * without.max()


def test_replay_brings_an_fp8_moe_rollouts_mismatch_down_to_the_dense_level(models, tokenizer):
    moe, dense = models
    samples = rollout(moe, tokenizer, fp8="block")
    without, replayed = mismatch(moe, samples, replay=False), mismatch(moe, samples, replay=True)
    dense_level = mismatch(dense, rollout(dense, tokenizer, fp8="block", record=False), replay=False)
    print(f"\nmean |Δ log p| (max): dense {dense_level.mean():.4f} ({dense_level.max():.3f}), MoE {without.mean():.4f} "
          f"({without.max():.3f}), MoE with routing replay {replayed.mean():.4f} ({replayed.max():.3f})")
    assert replayed.mean() < 0.75 * without.mean() and replayed.max() < 0.5 * without.max()
    assert replayed.mean() <= dense_level.mean() and replayed.max() <= dense_level.max()


def test_replayed_experts_are_used_and_the_gate_still_gets_gradients(models):
    moe, _ = models
    model = TorchTrainer(str(moe), TrainConfig(), global_batch_size=1, temperature=1.0).model
    tokens = torch.tensor([[5, 6, 7, 8]])
    forced = torch.tensor([[[0, 1], [2, 3]], [[3, 2], [1, 0]], [[0, 3], [NO_REPLAY, NO_REPLAY]], [[1, 2], [1, 2]]])
    recorder = RoutingRecorder(model)  # registered after nothing else: sees the router's own choice
    with replay_routing(model, forced):
        model(input_ids=tokens).logits.sum().backward()
    gate = moe_routers(model)[0]
    assert gate.weight.grad is not None and gate.weight.grad.abs().sum() > 0
    with torch.no_grad(), replay_routing(model, forced):
        seen = []
        handle = moe_routers(model)[1].register_forward_hook(lambda m, a, out: seen.append(out[2]))
        model(input_ids=tokens)
        handle.remove()
    own_layer1 = recorder.call(1)[2, 1]  # position 2 of layer 1 was left to the router
    assert seen[0][:2].tolist() == [[2, 3], [1, 0]] and seen[0][2].tolist() == own_layer1.tolist()


def test_a_run_with_routing_replay_trains_and_saves_the_experts(tiny_model, tiny_moe_model, tmp_path):
    out, debug = tmp_path / "run", tmp_path / "debug"
    flags = run_flags(tiny_moe_model, out, "--num-rollout", "1", "--use-routing-replay", "--save-debug-rollout-data",
                      str(debug), evaluate=False)
    flags[flags.index("--prompt-data") + 1] = str(tiny_model / "data" / "train.jsonl")
    subprocess.run([sys.executable, "-m", "async_rl.train", *flags], cwd=REPO, check=True, capture_output=True, timeout=600)
    assert "train/loss" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    saved = [json.loads(line) for line in (debug / "rollout_000000.jsonl").read_text().splitlines()]
    assert all(len(s["routed_experts"]) == len(s["prompt_tokens"]) + len(s["response_tokens"]) - 1 for s in saved)


def test_routing_replay_is_refused_where_it_cannot_apply(tiny_model, tiny_moe_model, tmp_path):
    def problems(model, *flags):
        cfg, _ = parse_config(["--hf-checkpoint", str(model), "--prompt-data", str(tiny_model / "data" / "train.jsonl"),
                               "--output-dir", str(tmp_path / "run"), "--use-routing-replay", *flags])
        return startup_problems(cfg)

    assert any("applies to MoE models" in p for p in problems(tiny_model))
    assert not any("routing" in p for p in problems(tiny_moe_model, "--use-rollout-routing-replay"))
    assert any("does not emulate FP8 MoE experts" in p for p in problems(tiny_moe_model, "--rollout-quantization", "fp8"))
