"""Move a colocated megatron trainer's GPU state to the host while the engines generate, and back to train.

megatron-core's own calls do the moving: the DDP gradient buffers are freed and reallocated (their contents
are dead between optimizer steps), the optimizer moves its state and FP32 main weights to the CPU and back.
The BF16 model weights go last, after the weight push that reads them, one tensor at a time into pinned host
memory. The distributed optimizer keeps the weights in DDP's parameter buffer instead; moving that buffer
(megatron's `offload_to_cpu(move_params=True)`) left weights unreadable on the GPU, so it is refused for now.
"""

from __future__ import annotations

from typing import Any

import torch


class MegatronOffloader:
    def __init__(self, ddp_model: Any, optimizer: Any, frozen: list[torch.nn.Module]):
        """`frozen`: models without gradients (the reference policy), whose weights move too."""
        self.ddp = ddp_model
        self.optimizer = optimizer
        if any(b.param_data is not None for b in [*ddp_model.buffers, *ddp_model.expert_parallel_buffers]):
            raise ValueError("--offload-train does not support --use-distributed-optimizer yet")
        self.params = [*ddp_model.module.parameters(), *(p for m in frozen for p in m.parameters())]
        self.host_copies: list[torch.Tensor] = []
        self.optimizer_offloaded = False

    def offload_optimizer(self) -> None:
        """Gradient buffers and optimizer state (with the FP32 main weights) off the GPU."""
        if self.optimizer_offloaded:
            return
        self.ddp.offload_grad_buffers(synchronize=True, empty_cache=False)
        self.optimizer.offload_to_cpu()
        self.optimizer_offloaded = True
        torch.cuda.empty_cache()

    def offload_weights(self) -> None:
        """The model weights off the GPU (the optimizer's state is moved first)."""
        self.offload_optimizer()
        if self.host_copies:
            return
        for p in self.params:
            host = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=True)
            host.copy_(p.data, non_blocking=True)
            self.host_copies.append(host)
        torch.cuda.synchronize()
        for p, host in zip(self.params, self.host_copies):
            p.data = host
        torch.cuda.empty_cache()

    def onload(self) -> None:
        """Everything back on the GPU, ready for a training step."""
        device = torch.device("cuda", torch.cuda.current_device())
        if self.host_copies:
            for p, host in zip(self.params, self.host_copies):
                p.data = host.to(device, non_blocking=True)
            self.host_copies = []
        if self.optimizer_offloaded:
            self.optimizer.restore_from_cpu()
            self.ddp.restore_grad_buffers(synchronize=False)
            self.optimizer_offloaded = False
        torch.cuda.synchronize()
