"""Run megatron-core's GPT model on a CPU (checkpoint conversion on login nodes, CPU tests).

megatron-core assumes CUDA in three places that matter for a single-process forward pass and for
torch_dist checkpoints: it asks `torch.cuda.current_device()` where to put tensors it creates (RoPE
frequencies, buffers), its attention forks the CUDA RNG tracker around dropout, and the checkpoint
writer calls `torch.cuda.synchronize()` after copying tensors to the host. On a machine without CUDA,
`on_cpu()` answers the first with "cpu" and makes the other two no-ops (there is no device work to
wait for, and no dropout RNG to fork: RL training runs without dropout). Callers pass an explicit
attention mask, since megatron's default causal mask is built on "cuda".
"""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator

import torch
import torch.distributed as dist

from async_rl.config.sections import MegatronConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_megatron(rank: int, world_size: int, master_addr: str, master_port: int, mcfg: MegatronConfig,
                  stack: contextlib.ExitStack, seed: int = 0) -> None:
    """Join the process group (NCCL on GPUs, gloo on a CPU) and build Megatron's parallel state.

    On a CPU the patches of `on_cpu` stay in force until `stack` closes."""
    from megatron.core import parallel_state, tensor_parallel

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world_size)
    parallel_state.initialize_model_parallel(
        mcfg.tensor_model_parallel_size, mcfg.pipeline_model_parallel_size,
        context_parallel_size=mcfg.context_parallel_size, expert_model_parallel_size=mcfg.expert_model_parallel_size,
    )
    if torch.cuda.is_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        stack.enter_context(on_cpu())
    _define_missing_te_gemm()


def _define_missing_te_gemm() -> None:
    """megatron-core < 0.17 defines its MoE router's `te_general_gemm` only when Transformer Engine imports,
    then tests it for None; without TE the router raises NameError. None is what later versions define."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


@contextlib.contextmanager
def single_process_megatron() -> Iterator[None]:
    """A world of one process (gloo on 127.0.0.1 without CUDA) with Megatron's parallel state; torn down on exit."""
    from megatron.core import parallel_state

    started = not dist.is_initialized()
    with contextlib.ExitStack() as stack:
        init_megatron(0, 1, "127.0.0.1", _free_port(), MegatronConfig(), stack)
        try:
            yield
        finally:
            parallel_state.destroy_model_parallel()
            if started:
                dist.destroy_process_group()


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    saved = torch.cuda.current_device, torch.cuda.synchronize, tracker.fork
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    tracker.fork = lambda *args, **kwargs: contextlib.nullcontext()
    try:
        yield
    finally:
        torch.cuda.current_device, torch.cuda.synchronize, tracker.fork = saved
