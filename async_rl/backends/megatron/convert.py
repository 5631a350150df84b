"""Hugging Face checkpoints <-> Megatron torch_dist checkpoints, on one process (a CPU is enough)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from async_rl.backends.megatron.cpu_compat import single_process_megatron
from async_rl.backends.megatron.hf_weights import hf_to_megatron, megatron_to_hf
from async_rl.backends.megatron.model import build_gpt_model
from async_rl.backends.megatron.model_checkpoint import load_model_checkpoint
from async_rl.backends.megatron.writer_watchdog import watch_writer
from async_rl.weights.hf_layout import read_hf_config, stack_experts

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                    "generation_config.json", "chat_template.jinja")


def _dtype(hf: dict) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(hf.get("torch_dtype") or hf.get("dtype"), torch.float32)


def _save_strategy():
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1)


def _replace_dir(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def hf_to_torch_dist(hf_dir: str, out_dir: str) -> None:
    """Write `out_dir` (torch_dist) from a HF checkpoint; written under a temporary name, then renamed."""
    from megatron.core import dist_checkpointing
    from transformers import AutoModelForCausalLM

    hf = read_hf_config(hf_dir)
    dtype = _dtype(hf)
    hf_state = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).state_dict()
    final = Path(out_dir)
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with single_process_megatron():
        model = build_gpt_model(hf, params_dtype=dtype)
        missing, unexpected = model.load_state_dict(hf_to_megatron(hf_state, hf), strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise ValueError(f"{hf_dir}: weights do not match the model (missing {missing}, unexpected {unexpected})")
        with watch_writer("convert_hf_to_torch_dist", str(staging)):
            dist_checkpointing.save(model.sharded_state_dict(), str(staging), sharded_strategy=_save_strategy())
    _replace_dir(staging, final)


def torch_dist_to_hf(in_dir: str, out_dir: str, origin_hf_dir: str) -> None:
    """Write a HF checkpoint from `in_dir` (torch_dist), shaped and tokenized like `origin_hf_dir`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = read_hf_config(origin_hf_dir)
    dtype = _dtype(hf)
    with single_process_megatron():
        model = build_gpt_model(hf, params_dtype=dtype)
        load_model_checkpoint(model, in_dir)
        hf_state = dict(megatron_to_hf(model.state_dict(), hf))
    hf_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(origin_hf_dir), dtype=dtype)
    missing, unexpected = hf_model.load_state_dict(stack_experts(hf_state), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and hf.get("tie_word_embeddings"))]
    if missing or unexpected:
        raise ValueError(f"{in_dir}: weights do not match {origin_hf_dir} (missing {missing}, unexpected {unexpected})")
    final = Path(out_dir)
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    hf_model.save_pretrained(staging, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (Path(origin_hf_dir) / name).is_file():
            shutil.copy(Path(origin_hf_dir) / name, staging / name)
    _replace_dir(staging, final)
