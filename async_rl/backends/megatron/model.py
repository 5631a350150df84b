"""A megatron-core `GPTModel` shaped like a Hugging Face Qwen2 / Qwen3 / Llama / Qwen3-MoE / GLM-4 / GLM-4.5 MoE /
DeepSeek-V3 checkpoint."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

import torch

from async_rl.weights.hf_layout import num_experts


def transformer_config(hf: dict[str, Any], **overrides: Any):
    """Megatron's `TransformerConfig` for an HF config dict (fused kernels off, so it also runs on a CPU); its
    `MLATransformerConfig` for multi-latent attention."""
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    fam = family(hf)
    heads = hf["num_attention_heads"]
    kwargs = dict(
        num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], ffn_hidden_size=hf["intermediate_size"],
        num_attention_heads=heads, num_query_groups=hf.get("num_key_value_heads", heads),
        kv_channels=hf.get("head_dim") or hf["hidden_size"] // heads,
        normalization="RMSNorm", layernorm_epsilon=hf.get("rms_norm_eps", 1e-6),
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        add_qkv_bias=fam.qkv_bias or bool(hf.get("attention_bias")),
        qk_layernorm=fam.qk_norm or bool(hf.get("use_qk_norm")),
        rotary_interleaved=fam.interleaved_rope,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, use_cpu_initialization=True,
        bias_dropout_fusion=False, apply_rope_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    if fam.multi_latent_attention:
        return MLATransformerConfig(**(kwargs | mla_config(hf) | moe_config(hf) | overrides))
    return TransformerConfig(**(kwargs | moe_config(hf) | overrides))


def mla_config(hf: dict[str, Any]) -> dict[str, Any]:
    """DeepSeek-V3's multi-latent attention: queries through a low-rank projection (`q_lora_rank`; a plain one
    without it) and keys and values through a shared latent, each latent RMS-normalized (Megatron's q/kv
    layernorms); RoPE on a separate part of each head, its interleaved channel pairs taken apart first (what
    Megatron's MLA does, and HF's `rope_interleave`)."""
    if not hf.get("rope_interleave", True):
        raise ValueError("multi-latent attention without rope_interleave is not supported by the megatron backend")
    heads = hf["num_attention_heads"]
    return dict(q_lora_rank=hf.get("q_lora_rank"), kv_lora_rank=hf["kv_lora_rank"],
                qk_head_dim=hf["qk_nope_head_dim"], qk_pos_emb_head_dim=hf["qk_rope_head_dim"],
                v_head_dim=hf["v_head_dim"], kv_channels=hf["v_head_dim"], num_query_groups=heads, qk_layernorm=True,
                **mla_rope(hf))


def mla_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """MLA's RoPE settings: plain, or YaRN with DeepSeek's factor, original context, betas and attention scales."""
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    base = float(hf.get("rope_theta") or params.get("rope_theta", 10000.0))
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind == "default":
        return {"rope_type": "rope", "rotary_base": base}
    if kind != "yarn":
        raise ValueError(f"RoPE scaling {kind!r} with multi-latent attention is not supported by the megatron backend")
    return {"rope_type": "yarn", "rotary_base": base, "rotary_scaling_factor": float(params["factor"]),
            "original_max_position_embeddings": int(params["original_max_position_embeddings"]),
            "beta_fast": float(params.get("beta_fast", 32)), "beta_slow": float(params.get("beta_slow", 1)),
            "mscale": float(params.get("mscale", 1.0)), "mscale_all_dim": float(params.get("mscale_all_dim", 0.0))}


def moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Megatron's MoE settings for the model's family; empty for a dense model. A routing Megatron would not
    reproduce is a ValueError."""
    moe = family(hf).moe
    return moe(hf) if moe else {}


def softmax_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
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


def sigmoid_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Megatron's MoE settings for DeepSeek-V3's routing (GLM-4.5/4.7 MoE's too): sigmoid scores, plus a per-expert
    bias that steers the choice only, top-k within the best groups of experts, the chosen scores renormalized and
    scaled; shared experts beside the routed ones; the first layers dense.

    HF ranks a group by the sum of its two best experts, Megatron by its best topk / topk_group: they agree where
    that is 2, or where there is one group. The bias is the checkpoint's and stays fixed (update rate 0), as
    slime's RL scripts set it; no load-balancing loss."""
    experts, topk = num_experts(hf), hf["num_experts_per_tok"]
    groups, group_topk = hf.get("n_group") or 1, hf.get("topk_group") or 1
    if not hf.get("norm_topk_prob", True):
        raise ValueError("sigmoid routing without norm_topk_prob is not supported by the megatron backend")
    if groups > 1 and topk // group_topk != 2:
        raise ValueError(f"group-limited routing with num_experts_per_tok {topk} and topk_group {group_topk} is not "
                         f"supported by the megatron backend (it ranks groups by their top {topk // group_topk} "
                         f"experts, Hugging Face by their top 2)")
    dense, shared = hf.get("first_k_dense_replace", 0), hf.get("n_shared_experts") or 0
    return dict(
        num_moe_experts=experts, moe_router_topk=topk, moe_ffn_hidden_size=hf["moe_intermediate_size"],
        moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True, moe_router_bias_update_rate=0.0,
        moe_router_num_groups=groups if groups > 1 else None, moe_router_group_topk=group_topk if groups > 1 else None,
        moe_router_topk_scaling_factor=hf.get("routed_scaling_factor") or None,
        moe_shared_expert_intermediate_size=hf["moe_intermediate_size"] * shared if shared else None,
        moe_layer_freq=[0] * dense + [1] * (hf["num_hidden_layers"] - dense),
        moe_router_load_balancing_type="none", moe_router_dtype="fp32", moe_grouped_gemm=False,
    )


@dataclass(frozen=True)
class Family:
    """How a Hugging Face model family's layer differs from Llama's, in what Megatron builds and how weights map."""

    qkv_bias: bool = False  # always (Qwen2); other families say so in config.json (`attention_bias`)
    qk_norm: bool = False  # per-head q/k RMSNorm always (Qwen3); others by `use_qk_norm`
    interleaved_rope: bool = False  # RoPE turns interleaved channel pairs (GLM-4)
    rotary_percent: float = 1.0  # the share of each head RoPE turns where config.json does not say
    post_norms: bool = False  # a norm after attention and after the MLP, before each residual add (GLM-4)
    fused_gate_up: bool = False  # the checkpoint holds the MLP's gate and up projections as one `gate_up_proj`
    multi_latent_attention: bool = False  # DeepSeek-V3's attention
    moe: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # Megatron's MoE settings; None: dense


FAMILIES = {
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm=True),
    "llama": Family(),
    "qwen3_moe": Family(qk_norm=True, moe=softmax_moe_config),
    "glm4": Family(interleaved_rope=True, rotary_percent=0.5, post_norms=True, fused_gate_up=True),
    "glm4_moe": Family(moe=sigmoid_moe_config),
    "deepseek_v3": Family(multi_latent_attention=True, moe=sigmoid_moe_config),
}
SUPPORTED = tuple(FAMILIES)


def family(hf: dict[str, Any]) -> Family:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported by the megatron backend (supported: {SUPPORTED})")
    return FAMILIES[model_type]


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


def transformer_engine_importable() -> bool:
    """Whether Transformer Engine's PyTorch layers import here (they need CUDA libraries)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def resolve_transformer_impl(requested: str | None) -> str:
    """`--transformer-impl`, or where unset: Transformer Engine on a GPU where it imports, the local spec otherwise."""
    if requested:
        return requested
    return "transformer_engine" if torch.cuda.is_available() and transformer_engine_importable() else "local"


# Transformer Engine's fused RoPE. (Fused weight-gradient accumulation would also need Apex for the output layer.)
_TE_FUSIONS = dict(apply_rope_fusion=True)


def fp8_settings(fp8_format: str | None, fp8_recipe: str | None, fp8_param_gather: bool) -> dict[str, Any]:
    """TransformerConfig's FP8 fields for `--fp8-format/--fp8-recipe/--fp8-param-gather` (empty when FP8 is off)."""
    if not fp8_format:
        return {}
    return dict(fp8=fp8_format, fp8_recipe=fp8_recipe or "delayed", fp8_param=fp8_param_gather)


def layer_spec(config, transformer_impl: str):
    """The transformer layer spec. Both specs write one torch_dist layout: the local spec's norms are saved under
    the names of TE's fused norm + linear (Megatron maps them), except a MoE layer's pre-MLP norm, which TE keeps
    separate and Megatron's local map would still rename; that mapping is dropped so MoE checkpoints match too."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec, get_gpt_layer_with_transformer_engine_spec

    experts = config.num_moe_experts
    if experts and isinstance(config.moe_layer_freq, list) and not all(config.moe_layer_freq):
        return _dense_and_moe_block_spec(config, transformer_impl)
    if transformer_impl == "transformer_engine":
        return get_gpt_layer_with_transformer_engine_spec(num_experts=experts, moe_grouped_gemm=config.moe_grouped_gemm,
                                                          qk_layernorm=config.qk_layernorm,
                                                          multi_latent_attention=config.multi_latent_attention)
    spec = get_gpt_layer_local_spec(num_experts=experts, moe_grouped_gemm=False, qk_layernorm=config.qk_layernorm,
                                    multi_latent_attention=config.multi_latent_attention, normalization="RMSNorm")
    _adapt_local_spec(spec, config, moe=bool(experts))
    return spec


def _adapt_local_spec(spec, config, moe: bool) -> None:
    if moe:
        _keep_pre_mlp_norm_name(spec)
    if config.multi_latent_attention:
        from async_rl.backends.megatron.local_mla_attention import LocalMLAAttention

        spec.submodules.self_attention.submodules.core_attention = LocalMLAAttention


def _keep_pre_mlp_norm_name(moe_layer_spec) -> None:
    moe_layer_spec.submodules.sharded_state_dict_keys_map = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}


def _dense_and_moe_block_spec(config, transformer_impl: str):
    """Megatron's block of dense layers and MoE layers as `moe_layer_freq` lays them out."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
    from megatron.core.transformer.moe.moe_layer import MoELayer

    block = get_gpt_decoder_block_spec(config, use_transformer_engine=transformer_impl == "transformer_engine",
                                       normalization="RMSNorm")
    if transformer_impl != "transformer_engine":
        for spec in block.layer_specs:
            _adapt_local_spec(spec, config, moe=spec.submodules.mlp.module is MoELayer)
    return block


def build_gpt_model(hf: dict[str, Any], transformer_impl: str = "local", **config_overrides: Any):
    """GPTModel with the local or the Transformer Engine layer spec, RoPE as in the HF config."""
    from megatron.core.models.gpt import GPTModel

    fam = family(hf)
    # megatron's fused RoPE kernel rotates halves
    fusions = _TE_FUSIONS if transformer_impl == "transformer_engine" and not fam.interleaved_rope else {}
    config = transformer_config(hf, **(fusions | config_overrides))
    spec = layer_spec(config, transformer_impl)
    if fam.post_norms:
        from async_rl.backends.megatron.post_norms import with_post_norms

        spec = with_post_norms(spec, _norm_class(transformer_impl))
    rope = {} if config.multi_latent_attention else {"rotary_percent": rotary_percent(hf), **rope_arguments(hf)}
    return GPTModel(
        config, spec, vocab_size=hf["vocab_size"], max_sequence_length=hf.get("max_position_embeddings", 4096),
        position_embedding_type="rope", share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings")), **rope,
    )


def rotary_percent(hf: dict[str, Any]) -> float:
    """The share of each head's channels RoPE rotates: config.json's, else the family's (GLM-4 rotates half)."""
    params = hf.get("rope_parameters") or {}
    return float(hf.get("partial_rotary_factor") or params.get("partial_rotary_factor") or family(hf).rotary_percent)


def _norm_class(transformer_impl: str):
    if transformer_impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    from megatron.core.models.gpt.gpt_layer_specs import LNImpl

    return LNImpl


def causal_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Megatron's boolean mask (True = masked) from an HF [batch, seq] padding mask, causal on top."""
    seq = attention_mask.shape[1]
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device), 1)
    return future[None, None] | ~attention_mask.bool()[:, None, None, :]
