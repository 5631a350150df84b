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
    model = Glm4MoeForCausalLM(config)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("norm.weight", "e_score_correction_bias")):
                tensor.uniform_(0.5, 1.5) if name.endswith("weight") else tensor.uniform_(-0.1, 0.1)
            elif name.endswith("mlp.gate.weight"):
                tensor.normal_(0, 0.5)  # spread router scores, so that the bias and the groups decide something
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out
