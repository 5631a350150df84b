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
import os
import socket
from typing import Iterator

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def single_process_megatron(tensor_parallel: int = 1, pipeline_parallel: int = 1) -> Iterator[None]:
    """A world of one process (gloo on 127.0.0.1) with Megatron's parallel state; torn down on exit."""
    from megatron.core import parallel_state

    started = not dist.is_initialized()
    if started:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(tensor_parallel, pipeline_parallel)
    try:
        with on_cpu() if not torch.cuda.is_available() else contextlib.nullcontext():
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
