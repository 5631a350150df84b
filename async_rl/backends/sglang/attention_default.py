"""The attention backend an SGLang engine runs when the user names none.

On Hopper SGLang 0.5.17 picks FA3, which lives in sgl-kernel's `flash_ops` library (about 1.1 GB); slim
installs leave it out, and the engine then dies at its first forward. There the engine takes, by KV-cache
dtype, the faster of the two backends every SGLang install has, measured in one run on the 7B shape at
batch 256 x 2,048 new tokens (`docs/reports/benchmarks.md`): triton for a BF16 cache (1.15x FlashInfer), FlashInfer
for an FP8 cache (1.04x triton). Everywhere else SGLang's own choice stands: FA3 was not measured against
them, and off Hopper SGLang does not pick it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)

USER_CHOICE = ("attention_backend", "prefill_attention_backend", "decode_attention_backend")
HOPPER = 9


def fa3_installed() -> bool:
    """Whether sgl-kernel carries its FA3 library; looked up on disk, without importing CUDA code."""
    spec = importlib.util.find_spec("sgl_kernel")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(d).glob("flash_ops*.so")) for d in spec.submodule_search_locations)


def backend_without_fa3(kv_cache_dtype: str) -> str:
    return "flashinfer" if kv_cache_dtype.startswith("fp8") else "triton"


def attention_override(server_args: Mapping[str, Any], gpu_major: int | None, has_fa3: bool) -> dict[str, str]:
    """`{"attention_backend": ...}` to add to an engine's server arguments, or {} to leave the choice to SGLang.

    `gpu_major`: the GPU's compute-capability major (None without a GPU)."""
    if any(name in server_args for name in USER_CHOICE) or gpu_major != HOPPER or has_fa3:
        return {}
    backend = backend_without_fa3(str(server_args.get("kv_cache_dtype", "auto")))
    logger.info("sgl-kernel has no FA3 library (SGLang's pick on Hopper): attention backend %s", backend)
    return {"attention_backend": backend}


def default_attention(server_args: Mapping[str, Any]) -> dict[str, str]:
    """`attention_override` for this process's GPU and SGLang install."""
    major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else None
    return attention_override(server_args, major, fa3_installed())
