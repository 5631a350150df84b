"""A megatron-core `GPTModel` shaped like a Hugging Face Qwen2 / Qwen3 / Llama checkpoint."""

from __future__ import annotations

from typing import Any

import torch

SUPPORTED = ("qwen2", "qwen3", "llama")


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
        qk_layernorm=model_type == "qwen3",
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, use_cpu_initialization=True,
        bias_dropout_fusion=False, apply_rope_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    return TransformerConfig(**(kwargs | overrides))


def build_gpt_model(hf: dict[str, Any], **config_overrides: Any):
    """GPTModel with the local (non-Transformer-Engine) layer spec, RoPE as in the HF config."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = transformer_config(hf, **config_overrides)
    rope = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return GPTModel(
        config, get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization="RMSNorm"),
        vocab_size=hf["vocab_size"], max_sequence_length=hf.get("max_position_embeddings", 4096),
        position_embedding_type="rope", rotary_base=int(rope),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings")),
    )


def causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Megatron's boolean mask (True = masked) from an HF [batch, seq] padding mask, causal on top."""
    seq = attention_mask.shape[1]
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device), 1)
    return future[None, None] | ~attention_mask.bool()[:, None, None, :]
