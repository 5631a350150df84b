"""megatron-core's GPTModel on a CPU: same log-probs as Hugging Face, and HF -> torch_dist -> HF is lossless."""

import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from tests.conftest import REPO

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test]')")

from async_rl.backends.megatron.cpu_compat import single_process_megatron  # noqa: E402
from async_rl.backends.megatron.hf_weights import hf_to_megatron, megatron_to_hf  # noqa: E402
from async_rl.backends.megatron.model import build_gpt_model, causal_mask, rope_arguments  # noqa: E402


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory, tiny_model):
    """A tiny random Qwen3 (q/k norms, no qkv bias, GQA, tied embeddings) with the embedded model's tokenizer."""
    out = tmp_path_factory.mktemp("qwen3")
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=262, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
    Qwen3ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def llama_config(**rope) -> LlamaConfig:
    return LlamaConfig(vocab_size=262, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=131072, **rope)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory, tiny_model):
    """A tiny random Llama 3 (untied output layer, Llama 3's RoPE scaling)."""
    out = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(rope_parameters=LLAMA3_ROPE)).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(params=["qwen2", "qwen3", "qwen3_moe", "llama", "glm4", "glm4_moe", "deepseek_v3"])
def hf_dir(request):
    fixture = {"qwen2": "tiny_model", "qwen3": "qwen3_model", "qwen3_moe": "tiny_moe_model", "llama": "llama_model"}
    return request.getfixturevalue(fixture.get(request.param, f"{request.param}_model"))


def test_megatron_log_probs_match_hugging_face_on_cpu(hf_dir):
    assert_same_log_probs(AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval())


def test_moe_routing_without_renormalized_top_k_matches_too():
    """norm_topk_prob=False (transformers' default): softmax over all experts, then top k, as Megatron's pre-softmax."""
    torch.manual_seed(2)
    config = Qwen3MoeConfig(vocab_size=262, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    assert_same_log_probs(Qwen3MoeForCausalLM(config).eval())


def test_llama3_rope_scaling_matches_over_a_long_sequence():
    """Llama 3 scales RoPE's low frequencies; far enough into a sequence the unscaled angles differ visibly."""
    torch.manual_seed(3)
    assert_same_log_probs(LlamaForCausalLM(llama_config(rope_parameters=LLAMA3_ROPE)).eval(), seq_len=512)


def test_deepseek_v3_yarn_rope_and_its_attention_scale_match_over_a_long_sequence():
    """YaRN stretches RoPE past the original context and scales the attention logits (mscale_all_dim)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(4)
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 32,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    config = DeepseekV3Config(vocab_size=262, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                              num_hidden_layers=2, first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
                              n_group=1, topk_group=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
                              kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                              max_position_embeddings=256, rope_parameters=yarn)
    assert_same_log_probs(DeepseekV3ForCausalLM(config).eval(), seq_len=200)


def test_rope_arguments_read_older_configs_and_refuse_scaling_megatron_cannot_apply():
    older = {"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    assert rope_arguments(older) == {"rotary_base": 500000, "rope_scaling": True, "rope_scaling_factor": 32.0}
    with pytest.raises(ValueError, match="RoPE scaling 'yarn'"):
        rope_arguments({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}})


def assert_same_log_probs(hf_model, seq_len: int = 16):
    hf = hf_model.config.to_dict()
    torch.manual_seed(1)
    ids = torch.randint(0, hf["vocab_size"], (3, seq_len))
    mask = torch.ones(3, seq_len, dtype=torch.long)
    mask[1, :5] = 0  # left padding, as the trainer packs prompts
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with single_process_megatron():
        model = build_gpt_model(hf).eval()
        model.load_state_dict(hf_to_megatron(hf_model.state_dict(), hf), strict=False)
        with torch.no_grad():
            ours = model(ids, positions, attention_mask=causal_mask(mask)).log_softmax(-1)
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.log_softmax(-1)
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-4, rtol=0)


def test_weight_mapping_round_trips_exactly(hf_dir):
    """From transformers' in-memory layout and from the checkpoint's, back to the checkpoint's tensors."""
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf = hf_model.config.to_dict()
    checkpoint = load_file(hf_dir / "model.safetensors")
    for source in (hf_model.state_dict(), checkpoint):
        back = dict(megatron_to_hf(hf_to_megatron(source, hf), hf))
        assert set(back) == set(checkpoint)
        assert all(torch.equal(back[k], checkpoint[k]) for k in checkpoint)


def test_hf_to_torch_dist_to_hf_gives_identical_tensors(hf_dir, tmp_path):
    dist_dir, hf_out = tmp_path / "torch_dist", tmp_path / "hf"
    subprocess.run([sys.executable, "tools/convert_hf_to_torch_dist.py", "--hf-checkpoint", str(hf_dir), "--save",
                    str(dist_dir)], cwd=REPO, check=True, capture_output=True)
    assert (dist_dir / "metadata.json").is_file() and not (tmp_path / ".torch_dist.tmp").exists()
    subprocess.run([sys.executable, "tools/convert_torch_dist_to_hf.py", "--input-dir", str(dist_dir), "--output-dir",
                    str(hf_out), "--origin-hf-dir", str(hf_dir)], cwd=REPO, check=True, capture_output=True)
    original, converted = load_file(hf_dir / "model.safetensors"), load_file(hf_out / "model.safetensors")
    assert set(original) == set(converted)
    assert all(torch.equal(original[k], converted[k]) for k in original)
    assert (hf_out / "tokenizer.json").is_file()


def test_a_directory_without_config_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "tools/convert_hf_to_torch_dist.py", "--hf-checkpoint", str(tmp_path),
                             "--save", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "no config.json" in result.stderr and "Traceback" not in result.stderr


def test_a_converter_never_writes_over_an_earlier_output(tmp_path):
    (tmp_path / "out").mkdir()
    result = subprocess.run([sys.executable, "tools/convert_hf_to_torch_dist.py", "--hf-checkpoint", str(tmp_path),
                             "--save", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and f"--save {tmp_path / 'out'} already exists" in result.stderr


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_the_local_spec_saves_under_transformer_engine_names(tiny_model, tiny_moe_model, moe):
    """One torch_dist layout whichever spec writes it: the local spec's norms are saved under the keys of TE's fused
    norm + linear, and a MoE layer's pre-MLP norm (a module of its own under TE) keeps its own key."""
    hf_dir = tiny_moe_model if moe else tiny_model
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).config.to_dict()
    with single_process_megatron():
        keys = {t.key for t in build_gpt_model(hf).sharded_state_dict().values()}  # the keys written to disk
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys
    assert ("decoder.layers.pre_mlp_layernorm.weight" in keys) == moe
    assert ("decoder.layers.mlp.linear_fc1.layer_norm_weight" in keys) != moe
    assert not any("input_layernorm" in k for k in keys)


def test_transformer_engine_parameter_names_map_to_local_ones():
    from async_rl.backends.megatron.param_names import local_name

    layer = "decoder.layers.3."
    assert local_name(layer + "self_attention.linear_qkv.layer_norm_weight") == layer + "input_layernorm.weight"
    assert local_name(layer + "mlp.linear_fc1.layer_norm_weight") == layer + "pre_mlp_layernorm.weight"
    assert local_name(layer + "mlp.experts.linear_fc1.weight12") == layer + "mlp.experts.local_experts.12.linear_fc1.weight"
    assert local_name(layer + "mlp.experts.linear_fc2.weight0") == layer + "mlp.experts.local_experts.0.linear_fc2.weight"
    for same in (layer + "self_attention.linear_qkv.weight", layer + "pre_mlp_layernorm.weight",
                 layer + "mlp.router.weight", "embedding.word_embeddings.weight"):
        assert local_name(same) == same


def test_a_converter_whose_writer_dies_exits_with_one_line_and_leaves_no_process(tiny_model, tmp_path):
    """megatron-core waits for its writer processes without a timeout; a dead one must not hang the converter."""
    import os

    import psutil

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "plugins" / "broken_psutil"), str(REPO)]))
    proc = subprocess.Popen([sys.executable, "tools/convert_hf_to_torch_dist.py", "--hf-checkpoint", str(tiny_model),
                             "--save", str(tmp_path / "out")], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    children = set()
    try:
        while proc.poll() is None:  # record every process it starts, to look for them afterwards
            try:
                children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("convert_hf_to_torch_dist: error: a checkpoint writer process died")
    assert not (tmp_path / "out").exists()
    time.sleep(1)  # a resource tracker ends once its pipe closes
    alive = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [psutil.Process(pid).cmdline() for pid in alive]
