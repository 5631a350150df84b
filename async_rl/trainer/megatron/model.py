"""A megatron-core `GPTModel` shaped like a Hugging Face Qwen2 / Qwen3 / Llama / Qwen3-MoE checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from async_rl.weights.hf_layout import num_experts

SUPPORTED = ("qwen2", "qwen3", "llama", "qwen3_moe")


def transformer_config(hf: dict[str, Any], **overrides: Any):
    """Megatron's `TransformerConfig` for an HF config dict (fused kernels off, so it also runs on a CPU)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"model_type {model_type!r} is not supported by the megatron backend (supported: {SUPPORTED})")
    heads = hf["num_attention_heads"]
    kwargs = dict(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads, num_query_groups=hf.get("num_key_value_heads", heads),
        kv_channels=hf.get("head_dim") or hf["hidden_size"] // heads,
        normalization="RMSNorm", layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        add_qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias")),
        qk_layernorm=model_type in ("qwen3", "qwen3_moe"),
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, use_cpu_initialization=True,
        bias_dropout_fusion=False, apply_rope_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    if model_type == "qwen3_moe":
        kwargs |= moe_config(hf)
    return TransformerConfig(**(kwargs | overrides))


def moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Megatron's MoE settings for a Qwen3-MoE config: every layer sparse, top-k softmax routing, no aux loss.

    HF routes with a float32 softmax over all experts and keeps the top k, renormalized when
    `norm_topk_prob`; Megatron's top-k-then-softmax is exactly the renormalized form, and softmax-then-top-k
    (`moe_router_pre_softmax`) the other. The load-balancing loss is off: the RL loss is the policy's alone.
    """
    if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
        raise ValueError("Qwen3-MoE with dense layers (decoder_sparse_step != 1 or mlp_only_layers) is not supported "
                         "by the megatron backend yet")
    return dict(
        num_moe_experts=num_experts(hf), moe_router_topk=hf["num_experts_per_tok"],
        moe_ffn_hidden_size=hf["moe_intermediate_size"], moe_router_pre_softmax=not hf.get("norm_topk_prob", False),
        moe_router_load_balancing_type="none", moe_router_dtype="fp32", moe_grouped_gemm=False,
    )


# Llama 3's RoPE scaling as Megatron applies it: only the factor is a parameter, the rest is fixed
_MEGATRON_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def rope_arguments(hf: dict[str, Any]) -> dict[str, Any]:
    """GPTModel's RoPE arguments for an HF config: the base, and Llama 3's frequency scaling when the config has it.

    transformers 5 keeps them in `rope_parameters`, older configs in `rope_theta` and `rope_scaling`."""
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    base = hf.get("rope_theta") or params.get("rope_theta", 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return {"rotary_base": int(base)}
    fixed = {k: params.get(k) for k in _MEGATRON_LLAMA3_ROPE}
    if kind != "llama3" or fixed != _MEGATRON_LLAMA3_ROPE:
        raise ValueError(f"RoPE scaling {kind!r} with {fixed} is not supported by the megatron backend (Megatron "
                         f"applies llama3 scaling with {_MEGATRON_LLAMA3_ROPE} only)")
    return {"rotary_base": int(base), "rope_scaling": True, "rope_scaling_factor": float(params["factor"])}


def build_gpt_model(hf: dict[str, Any], **config_overrides: Any):
    """GPTModel with the local (non-Transformer-Engine) layer spec, RoPE as in the HF config."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = transformer_config(hf, **config_overrides)
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=False,
                                    qk_layernorm=config.qk_layernorm, normalization="RMSNorm")
    return GPTModel(
        config, spec,
        vocab_size=hf["vocab_size"], max_sequence_length=hf.get("max_position_embeddings", 4096),
        position_embedding_type="rope", **rope_arguments(hf),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings")),
    )


def causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Megatron's boolean mask (True = masked) from an HF [batch, seq] padding mask, causal on top."""
    seq = attention_mask.shape[1]
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device), 1)
    return future[None, None] | ~attention_mask.bool()[:, None, None, :]
