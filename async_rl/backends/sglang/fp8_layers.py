"""Which layers an SGLang engine serves in FP8, and whether the trainer's pushes quantize exactly those.

SGLang copies float8 values into a BF16 parameter without a word and has nowhere to put the scale, and it
leaves an FP8 parameter that no push reaches at whatever it started with (dummy weights, or the checkpoint).
Either way the engine generates from a model that is not the trainer's and nothing fails. So after its first
push an FP8 engine compares the layers it serves in FP8 with the ones the push sent in FP8, by name, and
stops the run with one line on any difference (`SGLangEngine.set_weight_version`).

`report_fp8_modules` runs inside the SGLang server as a custom weight loader (`custom_weight_loader`).
SGLang hands such a loader only the model and the pushed tensors and returns nothing to the caller, so the
path to write the report to travels as the name of the one placeholder tensor pushed with it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from async_rl.weights.hf_layout import EXPERT_WEIGHT

LOAD_FORMAT = f"{__name__}.report_fp8_modules"
# SGLang's fused projections (its models' `stacked_params_mapping`); a model's `packed_modules_mapping` adds to them
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_EXPERTS_MODULE = re.compile(r"(\.experts)\..*$")


def report_fp8_modules(model: torch.nn.Module, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Write the engine's FP8 modules (those holding a float8 parameter) and its fused names, as JSON."""
    [(path, _)] = named_tensors
    fp8 = sorted(name for name, module in model.named_modules()
                 if any(p.dtype == torch.float8_e4m3fn for p in module.parameters(recurse=False)))
    fused = {**FUSED, **{k: list(v) for k, v in (getattr(model, "packed_modules_mapping", None) or {}).items()}}
    partial = Path(f"{path}.{os.getpid()}")  # every tensor-parallel rank writes the same report
    partial.write_text(json.dumps({"fp8_modules": fp8, "fused": fused}))
    os.replace(partial, path)


def engine_module(hf_weight: str, fused: Mapping[str, Sequence[str]]) -> str:
    """The engine module a pushed Hugging Face weight lands in: fused projections and MoE experts share one."""
    expert = EXPERT_WEIGHT.match(hf_weight)
    if expert:  # one FusedMoE module holds every expert of a layer
        return expert.group(1).removesuffix(".")
    prefix, _, leaf = hf_weight.removesuffix(".weight").rpartition(".")
    leaf = next((name for name, parts in fused.items() if leaf in parts), leaf)
    return f"{prefix}.{leaf}"


def fp8_layer_difference(pushed_fp8: Iterable[str], served_fp8: Iterable[str],
                         fused: Mapping[str, Sequence[str]]) -> str | None:
    """One line naming how the layers pushed in FP8 and the engine's FP8 modules differ; None if they agree."""
    pushed = {engine_module(name, fused) for name in pushed_fp8}
    served = {_EXPERTS_MODULE.sub(r"\1", name) for name in served_fp8}  # whatever a MoE layer nests under its experts
    problems = []
    if pushed - served:
        problems.append(f"{len(pushed - served)} pushed in FP8 but served in BF16 (e.g. {min(pushed - served)})")
    if served - pushed:
        problems.append(f"{len(served - pushed)} served in FP8 but not pushed in FP8 (e.g. {min(served - pushed)})")
    if not problems:
        return None
    return "the trainer and the FP8 engine quantize different layers: " + "; ".join(problems)
