"""Hugging Face <-> Megatron parameter names and layouts (single rank: no tensor or pipeline split).

Megatron fuses attention into `linear_qkv`, grouped per key/value head: for each group, its query
heads, then its key head, then its value head. The MLP's gate and up projections are fused into
`linear_fc1` (gate first), per expert in a MoE layer, whose router is `mlp.router`; GLM-4's checkpoints hold
them fused already (`mlp.gate_up_proj`, gate first), and its two extra norms sit on the projections they follow
(`post_norms.py`). DeepSeek-V3's routers carry a score bias (`e_score_correction_bias`, Megatron's
`expert_bias`) and its MoE layers a shared expert; its attention's projections and latent norms are renames.
Everything else is a rename. Hugging Face MoE weights come in two layouts: checkpoints (and SGLang) name each expert
(`mlp.experts.{j}.gate_proj.weight`), while transformers 5 holds them stacked in memory
(`mlp.experts.gate_up_proj` [experts, 2 x ffn, hidden], gate first; `mlp.experts.down_proj`). Both are
read; the checkpoint layout is written.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from async_rl.backends.megatron.model import family
from async_rl.weights.hf_layout import num_experts, unstack_experts

_RENAMES = {  # per layer: Megatron suffix -> HF suffix
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
_POST_NORM_RENAMES = {  # GLM-4: each block's output projection carries the norm after it
    "self_attention.linear_proj.linear.weight": "self_attn.o_proj.weight",
    "self_attention.linear_proj.norm.weight": "post_self_attn_layernorm.weight",
    "mlp.linear_fc2.linear.weight": "mlp.down_proj.weight",
    "mlp.linear_fc2.norm.weight": "post_mlp_layernorm.weight",
}
_MLA_RENAMES = {  # DeepSeek-V3's multi-latent attention: low-rank query and shared key/value latents, normalized
    "self_attention.linear_q_proj.weight": "self_attn.q_proj.weight",
    "self_attention.linear_q_down_proj.weight": "self_attn.q_a_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_a_layernorm.weight",
    "self_attention.linear_q_up_proj.weight": "self_attn.q_b_proj.weight",
    "self_attention.linear_kv_down_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "self_attention.kv_layernorm.weight": "self_attn.kv_a_layernorm.weight",
    "self_attention.linear_kv_up_proj.weight": "self_attn.kv_b_proj.weight",
}
_GLOBAL = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}


def _shape(hf: dict[str, Any]) -> tuple[int, int, int]:
    heads = hf["num_attention_heads"]
    groups = hf.get("num_key_value_heads", heads)
    return heads // groups, groups, hf.get("head_dim") or hf["hidden_size"] // heads


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hf: dict[str, Any]) -> torch.Tensor:
    per_group, groups, head_dim = _shape(hf)
    rest = q.shape[1:]
    return torch.cat([q.reshape(groups, per_group * head_dim, *rest), k.reshape(groups, head_dim, *rest),
                      v.reshape(groups, head_dim, *rest)], dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, hf: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per_group, groups, head_dim = _shape(hf)
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(groups, (per_group + 2) * head_dim, *rest).split([per_group * head_dim, head_dim, head_dim], 1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def _renames(hf: dict[str, Any]) -> dict[str, str]:
    fam = family(hf)
    if fam.multi_latent_attention:
        qk_norms = {"self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"}
        return {m: h for m, h in _RENAMES.items() if m not in qk_norms} | _MLA_RENAMES
    if not fam.post_norms:
        return _RENAMES
    moved = {"self_attention.linear_proj.weight", "mlp.linear_fc2.weight"}
    return {m: h for m, h in _RENAMES.items() if m not in moved} | _POST_NORM_RENAMES


def hf_to_megatron(hf_state: dict[str, torch.Tensor], hf: dict[str, Any]) -> dict[str, torch.Tensor]:
    hf_state = dict(unstack_experts(hf_state.items()))
    renames = _renames(hf)
    out = {m: hf_state[h] for m, h in _GLOBAL.items() if h in hf_state}
    if hf.get("tie_word_embeddings"):
        out.pop("output_layer.weight", None)  # the embedding serves as the output layer
    for i in range(hf["num_hidden_layers"]):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for m, h in renames.items():
            if src + h in hf_state:
                out[dst + m] = hf_state[src + h]
        attn = src + "self_attn."
        for kind in ("weight", "bias"):
            if f"{attn}k_proj.{kind}" in hf_state:
                out[f"{dst}self_attention.linear_qkv.{kind}"] = fuse_qkv(
                    *(hf_state[f"{attn}{p}_proj.{kind}"] for p in "qkv"), hf)
        if src + "mlp.gate_up_proj.weight" in hf_state:
            out[dst + "mlp.linear_fc1.weight"] = hf_state[src + "mlp.gate_up_proj.weight"]
        elif src + "mlp.gate_proj.weight" in hf_state:
            out[dst + "mlp.linear_fc1.weight"] = torch.cat([hf_state[src + "mlp.gate_proj.weight"],
                                                            hf_state[src + "mlp.up_proj.weight"]])
        else:
            out |= _experts_to_megatron(hf_state, src, dst, num_experts(hf))
    return out


def _experts_to_megatron(hf_state: dict[str, torch.Tensor], src: str, dst: str, experts: int) -> dict[str, torch.Tensor]:
    out = {dst + "mlp.router.weight": hf_state[src + "mlp.gate.weight"]}
    if src + "mlp.gate.e_score_correction_bias" in hf_state:
        out[dst + "mlp.router.expert_bias"] = hf_state[src + "mlp.gate.e_score_correction_bias"]
    shared = src + "mlp.shared_experts."
    if shared + "gate_proj.weight" in hf_state:
        out[dst + "mlp.shared_experts.linear_fc1.weight"] = torch.cat([hf_state[shared + "gate_proj.weight"],
                                                                       hf_state[shared + "up_proj.weight"]])
        out[dst + "mlp.shared_experts.linear_fc2.weight"] = hf_state[shared + "down_proj.weight"]
    for j in range(experts):
        expert, h = f"{dst}mlp.experts.local_experts.{j}.", f"{src}mlp.experts.{j}."
        out[expert + "linear_fc1.weight"] = torch.cat([hf_state[h + "gate_proj.weight"], hf_state[h + "up_proj.weight"]])
        out[expert + "linear_fc2.weight"] = hf_state[h + "down_proj.weight"]
    return out


def megatron_to_hf(state: dict[str, torch.Tensor], hf: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """HF (name, tensor) pairs in checkpoint order; Megatron's `_extra_state` entries are skipped."""
    for m, h in _GLOBAL.items():
        if m in state and m != "output_layer.weight":
            yield h, state[m]
    renames, fused_gate_up = _renames(hf), family(hf).fused_gate_up
    for i in range(hf["num_hidden_layers"]):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for m, h in renames.items():
            if src + m in state:
                yield dst + h, state[src + m]
        for kind in ("weight", "bias"):
            if f"{src}self_attention.linear_qkv.{kind}" in state:
                for proj, part in zip("qkv", split_qkv(state[f"{src}self_attention.linear_qkv.{kind}"], hf)):
                    yield f"{dst}self_attn.{proj}_proj.{kind}", part
        if src + "mlp.linear_fc1.weight" in state and fused_gate_up:
            yield dst + "mlp.gate_up_proj.weight", state[src + "mlp.linear_fc1.weight"]
        elif src + "mlp.linear_fc1.weight" in state:
            gate, up = state[src + "mlp.linear_fc1.weight"].chunk(2)
            yield dst + "mlp.gate_proj.weight", gate
            yield dst + "mlp.up_proj.weight", up
        else:
            yield dst + "mlp.gate.weight", state[src + "mlp.router.weight"]
            if src + "mlp.router.expert_bias" in state:
                yield dst + "mlp.gate.e_score_correction_bias", state[src + "mlp.router.expert_bias"]
            if src + "mlp.shared_experts.linear_fc1.weight" in state:
                gate, up = state[src + "mlp.shared_experts.linear_fc1.weight"].chunk(2)
                yield dst + "mlp.shared_experts.gate_proj.weight", gate
                yield dst + "mlp.shared_experts.up_proj.weight", up
                yield dst + "mlp.shared_experts.down_proj.weight", state[src + "mlp.shared_experts.linear_fc2.weight"]
            for j in range(num_experts(hf)):
                expert, out = f"{src}mlp.experts.local_experts.{j}.", f"{dst}mlp.experts.{j}."
                gate, up = state[expert + "linear_fc1.weight"].chunk(2)
                yield out + "gate_proj.weight", gate
                yield out + "up_proj.weight", up
                yield out + "down_proj.weight", state[expert + "linear_fc2.weight"]
    if "output_layer.weight" in state and not hf.get("tie_word_embeddings"):
        yield "lm_head.weight", state["output_layer.weight"]
