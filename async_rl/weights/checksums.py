"""`--check-weight-update-equal`: after a push, every engine holds exactly the bytes the trainer sent.

Both sides digest each tensor under its checkpoint-layout name: the engine what it holds, the trainer what it
pushes, cast to the dtype the engine holds it in (a BF16 engine of an FP32 trainer stores the rounded values; FP8
weights and their scales are compared as the trainer's own quantization made them). The first name that differs,
or that the engine lacks, stops the run: the silent corruption of a push that half landed.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import torch

from async_rl.errors import TrainingAborted

Digests = dict[str, tuple[str, str]]  # name -> (dtype, digest)


def digest(tensor: torch.Tensor) -> str:
    raw = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
    return hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()


def digests(named: Iterable[tuple[str, torch.Tensor]]) -> Digests:
    return {name: (str(t.dtype).removeprefix("torch."), digest(t)) for name, t in named}


def digests_as(named: Iterable[tuple[str, torch.Tensor]], dtypes: dict[str, str]) -> Digests:
    """The pushed tensors' digests in the dtype the engine holds each in (raw bytes for FP8 payloads)."""
    out = {}
    for name, tensor in named:
        held = dtypes.get(name)
        if held is not None and tensor.is_floating_point() and held != "float8_e4m3fn":
            tensor = tensor.to(getattr(torch, held))
        out[name] = (held or str(tensor.dtype).removeprefix("torch."), digest(tensor))
    return out


def check_equal(pushed: Digests, held: Digests, engine: int, version: int) -> None:
    for name, (dtype, value) in pushed.items():
        if name not in held:
            raise TrainingAborted(f"--check-weight-update-equal: engine {engine} holds no {name} after the push of "
                                  f"version {version}")
        if held[name][1] != value:
            raise TrainingAborted(f"--check-weight-update-equal: engine {engine}'s {name} ({held[name][0]}) differs from "
                                  f"the trainer's after the push of version {version}; first of the parameters that "
                                  "differ in checkpoint order")
