"""What the megatron backend refuses before anything starts, with one line naming the flag."""

import json

import pytest

from async_rl.config import parse_config
from async_rl.errors import UserInputError

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test]')")

from async_rl.backends.megatron import MegatronBackend  # noqa: E402


def check_megatron(cfg):
    """What a start checks of the megatron backend (the flags and machine, then the model), every problem at once."""
    problems = []
    for check in (MegatronBackend().check, MegatronBackend().check_model):
        try:
            check(cfg)
        except UserInputError as e:
            problems.append(str(e))
    if problems:
        raise UserInputError("\n".join(problems))


def config(model, *flags):
    return parse_config(["--hf-checkpoint", str(model), "--prompt-data", "x.jsonl", "--train-backend", "megatron",
                         "--actor-num-gpus-per-node", "2", "--global-batch-size", "8", *flags])[0]


def test_a_moe_model_under_tensor_parallelism_is_refused(tiny_moe_model):
    with pytest.raises(UserInputError, match="--tensor-model-parallel-size > 1 with a MoE model"):
        check_megatron(config(tiny_moe_model, "--tensor-model-parallel-size", "2"))


def test_expert_parallelism_needs_experts_it_can_split(tiny_model, tiny_moe_model):
    with pytest.raises(UserInputError, match=r"--expert-model-parallel-size 2 must divide the model's experts \(none\)"):
        check_megatron(config(tiny_model, "--expert-model-parallel-size", "2"))
    check_megatron(config(tiny_moe_model, "--expert-model-parallel-size", "2"))


def test_rope_scaling_megatron_cannot_apply_is_refused_before_the_run(tiny_model, tmp_path):
    config_json = json.loads((tiny_model / "config.json").read_text())
    config_json["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    with pytest.raises(UserInputError, match="RoPE scaling 'yarn'"):
        check_megatron(config(tmp_path))


def test_the_distributed_optimizer_needs_gpus(tiny_model):
    """On a CPU the backend steps with torch's AdamW, which would read gradients reduce-scattered into shards."""
    check_megatron(config(tiny_model, "--use-distributed-optimizer"))
    with pytest.raises(UserInputError, match="--use-distributed-optimizer needs GPUs"):
        check_megatron(config(tiny_model, "--use-distributed-optimizer", "--actor-num-gpus-per-node", "0"))


def test_transformer_engine_layers_need_gpus_and_transformer_engine(tiny_model, tiny_moe_model):
    """On a CPU (as in CI) the local spec trains; what only Transformer Engine's layers do stops with one line."""
    cpu = ("--actor-num-gpus-per-node", "0")
    with pytest.raises(UserInputError, match="--fp8-format runs Transformer Engine's layers, which need GPUs"):
        check_megatron(config(tiny_model, "--bf16", "--fp8-format", "e4m3", *cpu))
    with pytest.raises(UserInputError, match="--moe-grouped-gemm runs Transformer Engine's layers"):
        check_megatron(config(tiny_moe_model, "--moe-grouped-gemm", *cpu))
    check_megatron(config(tiny_model, "--transformer-impl", "local", *cpu))


def test_grouped_gemm_applies_to_moe_models_only(tiny_model):
    with pytest.raises(UserInputError, match="--moe-grouped-gemm applies to MoE models"):
        check_megatron(config(tiny_model, "--moe-grouped-gemm"))
