"""Move a colocated megatron trainer's GPU state to the host while the engines generate, and back to train.

The DDP gradient buffers are freed and reallocated by megatron-core's own calls (their contents are dead between
optimizer steps). The optimizer's state and FP32 main weights, and after the weight push that reads them the
BF16 model weights, go to page-locked host buffers kept for the run (`HostStash`): megatron-core's
`offload_to_cpu` copies into fresh pageable memory on every call, which is most of a 24 s move of a 7B slice.
The distributed optimizer keeps the weights in DDP's parameter buffers, every parameter a view of one: each
buffer moves whole and its storage is freed in place, so the views stay valid, and no parameter inside a buffer
is moved on its own (re-pointing a view's `.data` would cut it off from the buffer the optimizer writes into).
"""

from __future__ import annotations

from typing import Any

import torch

from async_rl.trainer.host_stash import HostStash


class MegatronOffloader:
    def __init__(self, ddp_model: Any, optimizer: Any, frozen: list[torch.nn.Module]):
        """`optimizer`: megatron's (possibly chained) optimizer; `frozen`: models without gradients (the reference
        policy), whose weights move too."""
        self.ddp = ddp_model
        # DDP buffers that hold parameters: the distributed optimizer's (none without it)
        holding = [b for b in [*ddp_model.buffers, *ddp_model.expert_parallel_buffers] if b.param_data is not None]
        self.param_buffers = [b.param_data for b in holding]
        self.inner_optimizers = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])
                                 if getattr(o, "optimizer", None) is not None]
        in_buffers = {id(p) for b in holding for p in b.params}
        self.params = [*(p for p in ddp_model.module.parameters() if id(p) not in in_buffers),
                       *(p for m in frozen for p in m.parameters())]
        self.stash = HostStash()
        self.optimizer_offloaded = self.weights_offloaded = False

    def offload_optimizer(self) -> None:
        """Gradient buffers and optimizer state (with the FP32 main weights) off the GPU."""
        if self.optimizer_offloaded:
            return
        self.ddp.offload_grad_buffers(synchronize=True, empty_cache=False)
        # FP32 parameters under the distributed optimizer: its main weights are views into the buffers, which move
        # with the weights (the storages are reallocated by every onload: look them up now)
        buffer_storages = frozenset(t.untyped_storage().data_ptr() for t in self.param_buffers)
        for n, optimizer in enumerate(self.inner_optimizers):
            self.stash.offload_optimizer(("optimizer", n), optimizer, params=True, skip_storages=buffer_storages)
        torch.cuda.synchronize()
        self.optimizer_offloaded = True
        torch.cuda.empty_cache()

    def offload_weights(self) -> None:
        """The model weights off the GPU (the optimizer's state is moved first)."""
        self.offload_optimizer()
        if self.weights_offloaded:
            return
        for i, buffer in enumerate(self.param_buffers):
            self.stash.offload_storage(("param buffer", i), buffer)
        self.stash.offload_params("weights", self.params)
        torch.cuda.synchronize()
        self.weights_offloaded = True
        torch.cuda.empty_cache()

    def onload(self) -> None:
        """Everything back on the GPU, ready for a training step."""
        self.stash.onload(torch.device("cuda", torch.cuda.current_device()))
        if self.optimizer_offloaded:
            self.ddp.restore_grad_buffers(synchronize=False)
        self.optimizer_offloaded = self.weights_offloaded = False
        torch.cuda.synchronize()
