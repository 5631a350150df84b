"""Host buffers that a colocated trainer's GPU tensors move into while the engines generate, reused every step.

Moving with `.cpu()` writes each tensor into fresh pageable memory that the OS faults in page by page, and a
fresh pinned buffer costs as much to lock: megatron-core's optimizer offload (`.cpu()` per tensor) plus fresh
pinned weight copies took 24 s for the 46 GiB of a 4-layer 7B slice on an H200, where PCIe moves that much in
about a second. Buffers page-locked once, on the first offload, and refilled in place on every later one make
each move a plain DMA copy. The price is host memory held for the run: one copy of everything offloaded.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import torch


class HostStash:
    """Moves tensors to reused host buffers and brings back exactly what it moved."""

    def __init__(self) -> None:
        self.buffers: dict[Hashable, torch.Tensor] = {}  # page-locked where a GPU is present
        self._params: list[torch.Tensor] = []  # parameters whose .data is a host buffer
        self._states: list[tuple[dict, str]] = []  # optimizer state entries that hold a host buffer
        self._storages: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # freed in place: tensor, host buffer, bytes

    def _put(self, key: Hashable, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`'s values in the host buffer kept under `key` (allocated on first use, or when the shape or
        dtype changed). The copy is asynchronous: synchronize before the GPU memory is reused or the buffer read."""
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=torch.cuda.is_available())
            self.buffers[key] = buffer
        return buffer.copy_(tensor, non_blocking=True)

    def offload_params(self, key: Hashable, params: Iterable[torch.Tensor],
                       skip_storages: frozenset[int] = frozenset()) -> None:
        """Point each device-resident parameter's `.data` at its host buffer. A parameter that views one of
        `skip_storages` (data pointers of storages moved whole by `offload_storage`) stays: re-pointing it would
        cut it off from the storage it must keep sharing."""
        for i, p in enumerate(params):
            if p.device.type != "cpu" and p.untyped_storage().data_ptr() not in skip_storages:
                p.data = self._put((key, i), p.data)
                self._params.append(p)

    def offload_storage(self, key: Hashable, tensor: torch.Tensor) -> None:
        """`tensor`'s values to its host buffer, then its storage freed in place (resized to nothing): the tensors
        that view it, such as the parameters inside a DDP parameter buffer, stay the same objects and read the
        values again after `onload`, which reallocates the storage and copies them back."""
        storage = tensor.untyped_storage()
        if tensor.storage_offset() or tensor.numel() * tensor.element_size() != storage.nbytes():
            raise ValueError("offload_storage needs a tensor that spans its whole storage")
        self._storages.append((tensor, self._put(key, tensor), storage.nbytes()))
        storage.resize_(0)  # later allocations on this stream are ordered after the copy that reads it

    def offload_optimizer(self, key: Hashable, optimizer: torch.optim.Optimizer, *, params: bool,
                          skip_storages: frozenset[int] = frozenset()) -> None:
        """The optimizer's state tensors (Adam's moments), and with `params` the tensors it updates (megatron's
        FP32 main weights, except those viewing `skip_storages`), to the host, keyed by their place in the
        optimizer."""
        for g, group in enumerate(optimizer.param_groups):
            if params:
                self.offload_params((key, g), group["params"], skip_storages)
            for i, p in enumerate(group["params"]):
                state = optimizer.state.get(p, {})
                for name, value in state.items():
                    if isinstance(value, torch.Tensor) and value.device.type != "cpu":
                        state[name] = self._put((key, g, i, name), value)
                        self._states.append((state, name))

    def onload(self, device: torch.device) -> None:
        """Everything offloaded back on `device`, asynchronously: synchronize before the next offload refills
        the buffers."""
        for p in self._params:
            p.data = p.data.to(device, non_blocking=True)
        for state, name in self._states:
            state[name] = state[name].to(device, non_blocking=True)
        for tensor, buffer, nbytes in self._storages:
            tensor.untyped_storage().resize_(nbytes)
            tensor.copy_(buffer, non_blocking=True)
        self._params, self._states, self._storages = [], [], []
