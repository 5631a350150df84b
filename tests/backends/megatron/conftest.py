import pytest
import torch
from transformers import AutoTokenizer, Glm4Config, Glm4ForCausalLM


@pytest.fixture(scope="session")
def glm4_model(tmp_path_factory, tiny_model):
    """A tiny random GLM-4: qkv bias, RoPE on interleaved pairs of half of each head, a norm after attention and
    after the MLP, fused gate/up projection, untied output layer."""
    out = tmp_path_factory.mktemp("glm4")
    torch.manual_seed(0)
    config = Glm4Config(vocab_size=262, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5, attention_bias=True,
                        tie_word_embeddings=False, pad_token_id=0, eos_token_id=[1])
    model = Glm4ForCausalLM(config)
    with torch.no_grad():  # random norms, so that a norm read from the wrong place shows
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def randomize_norms_and_routers(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and routers' score biases away from their initial 1 and 0, and router weights spread, so that
    a norm or bias read from the wrong place, or a routing choice made differently, shows in the outputs."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("norm.weight"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("e_score_correction_bias"):
                tensor.uniform_(-0.1, 0.1)
            elif name.endswith("mlp.gate.weight"):
                tensor.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def glm4_moe_model(tmp_path_factory, tiny_model):
    """A tiny random GLM-4.5-style MoE: a dense first layer, then sigmoid-routed experts with a score bias, group-
    limited top-k, scaled weights and a shared expert; q/k norms, qkv bias, RoPE on half of each head."""
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    out = tmp_path_factory.mktemp("glm4_moe")
    torch.manual_seed(0)
    config = Glm4MoeConfig(vocab_size=262, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                           num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=4,
                           n_group=2, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
                           use_qk_norm=True, attention_bias=True, tie_word_embeddings=False, pad_token_id=0,
                           eos_token_id=[1])
    model = randomize_norms_and_routers(Glm4MoeForCausalLM(config))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def deepseek_v3_model(tmp_path_factory, tiny_model):
    """A tiny random DeepSeek-V3 (what Moonlight and Kimi K2 are): multi-latent attention with a low-rank query,
    RoPE on interleaved pairs of its own head part, a dense first layer, then biased sigmoid routing over groups
    with a shared expert."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    out = tmp_path_factory.mktemp("deepseek_v3")
    torch.manual_seed(0)
    config = DeepseekV3Config(vocab_size=262, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                              num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=4,
                              n_group=2, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5,
                              num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16,
                              qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, tie_word_embeddings=False,
                              pad_token_id=0, eos_token_id=[1], rope_parameters={"rope_type": "default",
                                                                                 "rope_theta": 10000.0})
    model = randomize_norms_and_routers(DeepseekV3ForCausalLM(config))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out
