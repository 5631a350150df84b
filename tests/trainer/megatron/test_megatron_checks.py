"""What the megatron backend refuses before anything starts, with one line naming the flag."""

import pytest

from async_rl.config import parse_config
from async_rl.errors import UserInputError

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test]')")

from async_rl.placement import check_megatron  # noqa: E402


def config(model, *flags):
    return parse_config(["--hf-checkpoint", str(model), "--prompt-data", "x.jsonl", "--train-backend", "megatron",
                         "--actor-num-gpus-per-node", "2", "--global-batch-size", "8", *flags])[0]


@pytest.mark.parametrize("flags, message", [
    (["--expert-model-parallel-size", "2", "--max-tokens-per-gpu", "4096"], "--max-tokens-per-gpu with --expert-model"),
    (["--tensor-model-parallel-size", "2"], "--tensor-model-parallel-size > 1 with a MoE model"),
])
def test_moe_layouts_megatron_cannot_train_yet_are_refused(tiny_moe_model, flags, message):
    with pytest.raises(UserInputError, match=message):
        check_megatron(config(tiny_moe_model, *flags))


def test_expert_parallelism_needs_experts_it_can_split(tiny_model, tiny_moe_model):
    with pytest.raises(UserInputError, match=r"--expert-model-parallel-size 2 must divide the model's experts \(none\)"):
        check_megatron(config(tiny_model, "--expert-model-parallel-size", "2"))
    check_megatron(config(tiny_moe_model, "--expert-model-parallel-size", "2"))
