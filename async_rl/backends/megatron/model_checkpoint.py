"""Loading a torch_dist model checkpoint written by either layer spec.

Both specs save the same tensors under the same keys (see `model.layer_spec`). What differs is Transformer
Engine's `_extra_state` (FP8 scaling state, empty in BF16), which a local-spec checkpoint lacks and a local
model has no use for. Those entries alone may be absent on either side; any other mismatch is an error.
"""

from __future__ import annotations

import torch


def _not_extra_state(keys) -> list[str]:
    return sorted(k for k in keys if "_extra_state" not in k)


def load_model_checkpoint(model: torch.nn.Module, checkpoint_dir: str) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    state, _, not_in_checkpoint = dist_checkpointing.load(model.sharded_state_dict(), checkpoint_dir,
                                                          strict=StrictHandling.RETURN_UNEXPECTED)
    absent = _not_extra_state(not_in_checkpoint)
    if absent:
        raise ValueError(f"{checkpoint_dir}: the checkpoint lacks {len(absent)} of the model's tensors ({absent[:4]} ...)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if _not_extra_state(missing) or _not_extra_state(unexpected):
        raise ValueError(f"{checkpoint_dir}: weights do not match the model (missing {_not_extra_state(missing)}, "
                         f"unexpected {_not_extra_state(unexpected)})")
