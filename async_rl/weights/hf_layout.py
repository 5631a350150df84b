"""Hugging Face MoE models: how many experts a config declares, and their weights in two layouts, the
checkpoint's (what sync and SGLang use) and transformers'.

Checkpoints name every expert's projections (`mlp.experts.{j}.gate_proj.weight`, `up_proj`, `down_proj`);
transformers 5 holds a layer's experts stacked (`mlp.experts.gate_up_proj` [experts, 2 x ffn, hidden], gate
first, and `mlp.experts.down_proj` [experts, hidden, ffn]). Weight sync always speaks the checkpoint layout;
these convert at the edges where a transformers model is on the other side.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

# one expert's weight in the per-expert checkpoint layout: (layer prefix ending in "experts.", expert, projection)
EXPERT_WEIGHT = re.compile(r"(.*\.mlp\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def read_hf_config(hf_dir: str) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json (not a Hugging Face checkpoint directory)")
    return json.loads(path.read_text())


def num_experts(hf_config: dict[str, Any]) -> int | None:
    """Routed experts per MoE layer: Qwen's config.json says `num_experts`, transformers 5 writes
    `num_local_experts`, GLM-4.5 and DeepSeek-V3 `n_routed_experts`."""
    return hf_config.get("num_experts") or hf_config.get("num_local_experts") or hf_config.get("n_routed_experts")


def unstack_experts(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers' stacked expert tensors as per-expert checkpoint tensors (views); other tensors pass through."""
    for name, tensor in named:
        if name.endswith(".mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for j, fused in enumerate(tensor):
                gate, up = fused.chunk(2)
                yield f"{prefix}{j}.gate_proj.weight", gate
                yield f"{prefix}{j}.up_proj.weight", up
        elif name.endswith(".mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for j, down in enumerate(tensor):
                yield f"{prefix}{j}.down_proj.weight", down
        else:
            yield name, tensor


def stack_experts(checkpoint_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' stacked layout from a whole checkpoint-layout state dict (other tensors unchanged)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, tensor in checkpoint_state.items():
        match = EXPERT_WEIGHT.match(name)
        if match:
            experts.setdefault(match[1], {}).setdefault(match[3], {})[int(match[2])] = tensor
        else:
            out[name] = tensor
    for prefix, parts in experts.items():
        count = len(parts["down_proj"])
        out[prefix + "gate_up_proj"] = torch.stack([torch.cat([parts["gate_proj"][j], parts["up_proj"][j]])
                                                    for j in range(count)])
        out[prefix + "down_proj"] = torch.stack([parts["down_proj"][j] for j in range(count)])
    return out


def destination(name: str, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Where a checkpoint-layout tensor goes in a transformers model's `targets`: itself, or its expert's slice."""
    if name in targets:
        return targets[name]
    match = EXPERT_WEIGHT.match(name)
    if match and match[1] + "down_proj" in targets:
        j = int(match[2])
        if match[3] == "down_proj":
            return targets[match[1] + "down_proj"][j]
        gate, up = targets[match[1] + "gate_up_proj"][j].chunk(2)
        return gate if match[3] == "gate_proj" else up
    raise KeyError(f"weight update names unknown parameter {name!r}")
