"""MoE weights between transformers' stacked layout and the per-expert checkpoint layout that sync speaks."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from async_rl.weights.hf_layout import destination, stack_experts, unstack_experts
from async_rl.weights.sync import weight_buckets


def test_unstacking_gives_the_checkpoint_and_stacking_gives_the_model_back(tiny_moe_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_moe_model, dtype=torch.float32)
    checkpoint = load_file(tiny_moe_model / "model.safetensors")
    unstacked = dict(unstack_experts(model.state_dict().items()))
    assert set(unstacked) == set(checkpoint) and "model.layers.1.mlp.experts.3.up_proj.weight" in unstacked
    assert all(torch.equal(unstacked[k], checkpoint[k]) for k in checkpoint)
    stacked = stack_experts(checkpoint)
    assert set(stacked) == set(model.state_dict())
    assert all(torch.equal(stacked[k], v) for k, v in model.state_dict().items())


def test_an_unknown_name_is_refused_with_the_name():
    with pytest.raises(KeyError, match="model.layers.0.mlp.experts.9.gate_proj.weight"):
        destination("model.layers.0.mlp.experts.9.gate_proj.weight", {"model.norm.weight": torch.zeros(2)})


def test_the_local_engine_takes_a_moe_trainers_export(tiny_moe_model):
    trainer = TorchTrainer(str(tiny_moe_model), TrainConfig(), global_batch_size=4, temperature=1.0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    engine = LocalEngine(str(tiny_moe_model))
    engine.load_weights(list(trainer.export_weights()))
    mine, theirs = dict(engine.model.named_parameters()), dict(trainer.model.named_parameters())
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_fp8_emulation_keeps_moe_experts_in_full_precision_and_refuses_fp8_pushes_into_them(tiny_moe_model):
    engine = LocalEngine(str(tiny_moe_model), fp8="block")
    assert not any(".experts." in name for name in engine.fp8_modules) and engine.fp8_modules
    trainer = TorchTrainer(str(tiny_moe_model), TrainConfig(), global_batch_size=4, temperature=1.0)
    with pytest.raises(ValueError, match="emulates FP8 in linear layers, not in MoE experts"):
        for bucket in weight_buckets(trainer.export_weights(), bucket_bytes=2**30, fp8="block"):
            engine.load_weights(bucket)
