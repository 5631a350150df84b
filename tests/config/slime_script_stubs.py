"""Stub model and data directories for a slime script's argument vector, so that it can start under --dry-run.

The model's config.json is written from the script's own Megatron shape flags (the shapes slime's
scripts/models/*.sh give) and the model family its name says; data files hold one row with the script's keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from async_rl.config.slime_flags import FLAGS, MODEL

PATH_FLAGS = ("--hf-checkpoint", "--ref-load", "--load", "--save", "--prompt-data", "--eval-prompt-data",
              "--save-debug-rollout-data", "--load-debug-rollout-data", "--tensorboard-dir")


def model_type(argv: list[str], script: str) -> str:
    name = Path(script).stem.lower()
    if "--multi-latent-attention" in argv:
        return "deepseek_v3"
    if "glm" in name:
        return "glm4_moe" if "--num-experts" in argv else "glm4"
    if "--num-experts" in argv:
        return "qwen3_moe"
    if "--add-qkv-bias" in argv:
        return "qwen2"
    return "qwen3" if "--qk-layernorm" in argv else "llama"


def flag_values(argv: list[str]) -> dict[str, list[str]]:
    values, name = {}, None
    for token in argv:
        if token.startswith("--"):
            name = token
            values[name] = []
        elif name is not None:
            values[name].append(token)
    return values


def hf_config(argv: list[str], script: str) -> dict[str, Any]:
    config: dict[str, Any] = {"model_type": model_type(argv, script), "tie_word_embeddings": False}
    for name, values in flag_values(argv).items():
        spec = FLAGS.get(name)
        if spec is None or spec.kind != MODEL or not spec.hf_keys or not values:
            continue
        *parents, leaf = spec.hf_keys[0].split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = float(values[0]) if "." in values[0] or "e" in values[0] else int(values[0])
    if "fp8" in script.lower() or any(v.lower().endswith("-fp8") for v in argv):
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    return config


def stub_argv(argv: list[str], script: str, root: Path) -> list[str]:
    """argv with every path a stub under `root`: the checkpoint a directory with config.json and a tokenizer
    config, data files one row each, other paths (--save, --load, ...) fresh locations."""
    values = flag_values(argv)
    keys = {"input": (values.get("--input-key") or ["prompt"])[0], "label": (values.get("--label-key") or ["label"])[0]}
    out, name = [], None
    for token in argv:
        if token.startswith("--"):
            name = token
            out.append(token)
            continue
        if name in PATH_FLAGS and (token.startswith("/") or "/" in token):
            token = _stub(root, name, token, keys, argv, script)
        out.append(token)
    return [*out, "--output-dir", str(root / "run")]


def _stub(root: Path, flag: str, path: str, keys: dict[str, str], argv: list[str], script: str) -> str:
    target = root / "fs" / path.strip("/")
    if flag == "--hf-checkpoint":
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text(json.dumps(hf_config(argv, script)))
        (target / "tokenizer_config.json").write_text("{}")
    elif flag in ("--prompt-data", "--eval-prompt-data"):
        target.parent.mkdir(parents=True, exist_ok=True)
        row = {keys["input"]: [{"role": "user", "content": "1+1?"}] if "--apply-chat-template" in argv else "1+1?",
               keys["label"]: "2"}
        if target.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist([row]), target)
        else:
            target.write_text(json.dumps(row) + "\n")
    return str(target)
