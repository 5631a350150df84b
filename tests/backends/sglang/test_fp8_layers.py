"""After its first push an FP8 SGLang engine checks that it serves in FP8 exactly the layers the push sent in FP8.

The names pushed come from the repo's tiny checkpoints; the engine side is the module layout of SGLang's Qwen2
and Qwen3-MoE classes (fused qkv and gate/up projections, one FusedMoE module per layer), which the GPU probe
(`tests/gpu/sglang_probe.py`) reads from a real server.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from async_rl.backends.sglang.fp8_layers import FUSED, fp8_layer_difference, report_fp8_modules
from async_rl.weights.fp8 import is_fp8_quantizable
from async_rl.weights.hf_layout import num_experts


def pushed_fp8(model_dir: Path) -> list[str]:
    """The checkpoint's weights a push quantizes, by their Hugging Face names."""
    tensors = {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
    return [name for name, t in tensors.items() if is_fp8_quantizable(name, t)]


def served_fp8(model_dir: Path) -> list[str]:
    config = json.loads((model_dir / "config.json").read_text())
    mlp = ["mlp.experts"] if num_experts(config) else ["mlp.gate_up_proj", "mlp.down_proj"]
    return [f"model.layers.{i}.{m}" for i in range(config["num_hidden_layers"])
            for m in ["self_attn.qkv_proj", "self_attn.o_proj", *mlp]]


@pytest.fixture(params=["dense", "moe"])
def model_dir(request, tiny_model, tiny_moe_model) -> Path:
    return tiny_moe_model if request.param == "moe" else tiny_model


def test_a_push_of_every_linear_weight_matches_the_engines_fp8_modules(model_dir):
    assert pushed_fp8(model_dir)
    assert fp8_layer_difference(pushed_fp8(model_dir), served_fp8(model_dir), FUSED) is None


def test_a_layer_the_push_left_in_bf16_is_named(model_dir):
    pushed = [n for n in pushed_fp8(model_dir) if not n.startswith("model.layers.1.self_attn.o_proj")]
    assert fp8_layer_difference(pushed, served_fp8(model_dir), FUSED) == (
        "the trainer and the FP8 engine quantize different layers: 1 served in FP8 but not pushed in FP8 "
        "(e.g. model.layers.1.self_attn.o_proj)")


def test_a_layer_the_engine_serves_in_bf16_is_named(model_dir):
    served = [m for m in served_fp8(model_dir) if m != "model.layers.0.self_attn.qkv_proj"]
    message = fp8_layer_difference(pushed_fp8(model_dir), served, FUSED)
    assert message.endswith("1 pushed in FP8 but served in BF16 (e.g. model.layers.0.self_attn.qkv_proj)")


def test_the_report_names_modules_holding_float8_parameters_and_the_models_own_fused_names(tmp_path):
    class Model(torch.nn.Module):
        packed_modules_mapping = {"w13": ["w1", "w3"]}

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.ModuleDict({"fp8": torch.nn.Linear(4, 4), "bf16": torch.nn.Linear(4, 4)})
            self.layer["fp8"].weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.float8_e4m3fn), requires_grad=False)

    path = tmp_path / "report.json"
    report_fp8_modules(Model(), [(str(path), torch.zeros(1))])
    report = json.loads(path.read_text())
    assert report["fp8_modules"] == ["layer.fp8"]
    assert report["fused"] == {**{k: list(v) for k, v in FUSED.items()}, "w13": ["w1", "w3"]}
