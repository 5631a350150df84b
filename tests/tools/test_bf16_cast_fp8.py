import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from async_rl.weights.fp8 import dequantize, dequantize_blockwise
from tests.conftest import REPO


def cast(src, dst, *flags):
    return subprocess.run([sys.executable, str(REPO / "tools" / "bf16_cast_fp8.py"), "--input-bf16-hf-path", str(src),
                           "--output-fp8-hf-path", str(dst), *flags], capture_output=True, text=True, cwd=REPO)


def tensors(path):
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def bf16_model(tiny_model, tmp_path_factory):
    """The tiny model saved in BF16, as users' checkpoints are."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(out)
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        (out / extra).write_bytes((tiny_model / extra).read_bytes())
    return out


def test_output_layout_config_and_round_trip(bf16_model, tmp_path):
    result = cast(bf16_model, tmp_path / "fp8")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "fp8"
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]}
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    src, dst = tensors(bf16_model), tensors(out)
    name = "model.layers.0.mlp.down_proj.weight"
    assert dst[name].dtype == torch.float8_e4m3fn and dst[name + "_scale_inv"].dtype == torch.float32
    assert dst["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert dst["model.layers.0.self_attn.q_proj.bias"].dtype == torch.bfloat16
    assert set(dst) == set(src) | {n + "_scale_inv" for n in src if n.endswith("proj.weight")}
    back = dequantize_blockwise(dst[name], dst[name + "_scale_inv"], dtype=torch.float32)
    assert torch.allclose(back, src[name].float(), rtol=2**-4, atol=float(dst[name + "_scale_inv"].max()) * 2**-9)


def test_channel_granularity_writes_one_scale_per_row(bf16_model, tmp_path):
    result = cast(bf16_model, tmp_path / "fp8", "--granularity", "channel")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "w8a8_fp8"}
    src, dst = tensors(bf16_model), tensors(tmp_path / "fp8")
    assert set(dst) == set(src) | {n + "_scale" for n in src if n.endswith("proj.weight")}
    name = "model.layers.1.self_attn.o_proj.weight"
    assert dst[name + "_scale"].shape == (src[name].shape[0], 1)
    back = dequantize(dst[name], dst[name + "_scale"], "channel", dtype=torch.float32)
    assert torch.allclose(back, src[name].float(), rtol=2**-4, atol=float(dst[name + "_scale"].max()) * 2**-9)


@pytest.mark.parametrize("flags, pow2", [(["--force-pow-2-scale"], True), (["--no-force-pow-2-scale"], False),
                                         ([], False), (["--force-pow-2-scale", "False"], False),
                                         (["--force-pow-2-scale", "True"], True)])
def test_force_pow_2_scale_is_a_switch_and_false_really_means_false(bf16_model, tmp_path, flags, pow2):
    assert cast(bf16_model, tmp_path / "fp8", *flags).returncode == 0
    scales = torch.cat([t.flatten() for n, t in tensors(tmp_path / "fp8").items() if n.endswith("_scale_inv")])
    assert bool(torch.all(torch.frexp(scales).mantissa == 0.5)) == pow2


def test_sharded_output_has_an_index_and_tp_unfriendly_weights_stay_bf16(bf16_model, tmp_path):
    # hidden 64 / TP 2 = 32 rows per shard of q/k/v/o: not whole 128-blocks; MLP 256 / 2 = 128 is fine
    result = cast(bf16_model, tmp_path / "fp8", "--tensor-parallel-size", "2", "--max-shard-size", "64KB")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "fp8"
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1 and all((out / f).is_file() for f in set(index.values()))
    ignored = json.loads((out / "config.json").read_text())["quantization_config"]["ignored_layers"]
    assert "model.layers.0.self_attn.q_proj" in ignored and "model.layers.0.mlp.up_proj" not in ignored
    dst = tensors(out)
    assert dst["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert dst["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn


def test_existing_output_and_bad_input_are_refused(bf16_model, tmp_path):
    (tmp_path / "taken").mkdir()
    assert "already exists" in cast(bf16_model, tmp_path / "taken").stderr
    assert "no config.json" in cast(tmp_path, tmp_path / "out").stderr
    assert "expected True or False" in cast(bf16_model, tmp_path / "x", "--force-pow-2-scale", "maybe").stderr
