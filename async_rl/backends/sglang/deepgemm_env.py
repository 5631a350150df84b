"""The environment an SGLang server starts with: DeepGEMM on when it can compile, compiled on first use.

SGLang 0.5.17 ships DeepGEMM (`sgl-deep-gemm`) and uses it for blockwise-FP8 GEMMs on Hopper and newer; its
kernels are compiled at run time with nvcc. Without a CUDA toolkit the first FP8 GEMM fails and takes the
engine down, so the server then runs SGLang's Triton FP8 kernels instead. With one, kernels compile as each
shape is first met instead of all at start (SGLang's default precompiles every shape, which makes an engine
start minutes slower). A user's own SGLANG_ENABLE_JIT_DEEPGEMM or SGLANG_JIT_DEEPGEMM_PRECOMPILE wins.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

ENABLE = "SGLANG_ENABLE_JIT_DEEPGEMM"
PRECOMPILE = "SGLANG_JIT_DEEPGEMM_PRECOMPILE"
DEFAULT_TOOLKIT = Path("/usr/local/cuda")


def find_nvcc(environ: Mapping[str, str]) -> Path | None:
    """nvcc under $CUDA_HOME, on $PATH, or in /usr/local/cuda."""
    candidates = [Path(environ["CUDA_HOME"]) / "bin" / "nvcc"] if environ.get("CUDA_HOME") else []
    on_path = shutil.which("nvcc", path=environ.get("PATH", ""))
    candidates += [Path(on_path)] if on_path else []
    candidates.append(DEFAULT_TOOLKIT / "bin" / "nvcc")
    return next((c for c in candidates if c.is_file()), None)


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if ENABLE in env:
        return env
    nvcc = find_nvcc(env)
    if nvcc is None:
        logger.info("no nvcc found (CUDA_HOME, PATH, %s): SGLang's DeepGEMM FP8 kernels are off", DEFAULT_TOOLKIT)
        env[ENABLE] = "0"
        return env
    env.setdefault("CUDA_HOME", str(nvcc.parent.parent))
    env.setdefault(PRECOMPILE, "0")
    return env
