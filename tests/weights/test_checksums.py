"""--check-weight-update-equal's comparison: a push that landed whole passes, one that dropped or bent a tensor is
named, FP8 pairs compare as the trainer quantized them, and an FP32 trainer matches a BF16 engine's rounding."""

import pytest
import torch

from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from async_rl.errors import TrainingAborted
from async_rl.weights.checksums import check_equal, digests, digests_as


def pushed_digests(trainer, engine, fp8=None):
    held = engine.weight_digests()
    return trainer.weight_digests(1 << 20, fp8, False, {n: d for n, (d, _) in held.items()}), held


def push(trainer, engine, fp8=None, skip=None):
    for bucket in trainer.export_weight_buckets(1 << 20, fp8):
        engine.load_weights([(n, t) for n, t in bucket if n != skip])


@pytest.mark.parametrize("fp8", [None, "block"])
def test_a_whole_push_passes_and_a_dropped_tensor_is_named(tiny_model, fp8):
    trainer = TorchTrainer(str(tiny_model), TrainConfig(lr=1e-3), global_batch_size=2, temperature=1.0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01)  # the trainer's weights move away from the checkpoint the engine started from
    engine = LocalEngine(str(tiny_model), seed=1, fp8=fp8)
    push(trainer, engine, fp8)
    check_equal(*pushed_digests(trainer, engine, fp8), engine=0, version=1)

    engine = LocalEngine(str(tiny_model), seed=1, fp8=fp8)
    push(trainer, engine, fp8, skip="model.layers.0.mlp.down_proj.weight")
    with pytest.raises(TrainingAborted, match=r"engine 0's model.layers.0.mlp.down_proj.weight \(\w+\) differs"):
        check_equal(*pushed_digests(trainer, engine, fp8), engine=0, version=1)


def test_a_missing_tensor_is_named_and_rounding_to_the_engines_dtype_is_not_a_difference():
    trainer_weights = [("w", torch.tensor([1.0 + 2**-12, 3.0]))]  # FP32 values that BF16 rounds
    engine_weights = [("w", trainer_weights[0][1].to(torch.bfloat16))]
    held = digests(engine_weights)
    check_equal(digests_as(trainer_weights, {"w": "bfloat16"}), held, engine=0, version=2)
    with pytest.raises(TrainingAborted, match="engine 1 holds no v after the push of version 2"):
        check_equal(digests_as(trainer_weights + [("v", torch.ones(1))], {"w": "bfloat16"}), held, engine=1, version=2)
