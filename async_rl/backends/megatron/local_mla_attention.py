"""megatron-core's local attention for multi-latent attention, which its local layer spec cannot build.

MLA's queries and keys are wider than its values and its attention module passes both head sizes (`k_channels`,
`v_channels`); megatron-core's local `DotProductAttention` takes neither and sizes its output by the config's
`kv_channels`. With `kv_channels` the value head size (as `mla_config` sets it), that attention computes Q.K over
whatever width queries and keys have and its output over the values' width, so only the two arguments need a
home. Transformer Engine's attention takes them itself; this serves CPU runs and checkpoint conversion.

Without Transformer Engine, megatron-core's MLA module still believes it is there (its TE import falls back to
stubs) and tests its output projection against a `TELinear` stand-in that is no class; importing this module tells it
the truth.
"""

from __future__ import annotations

from typing import Any

from megatron.core.transformer import multi_latent_attention
from megatron.core.transformer.dot_product_attention import DotProductAttention

if not isinstance(multi_latent_attention.TELinear, type):
    multi_latent_attention.HAVE_TE = False


class LocalMLAAttention(DotProductAttention):
    def __init__(self, *args: Any, k_channels: int | None = None, v_channels: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if v_channels is not None and v_channels != self.hidden_size_per_attention_head:
            raise ValueError(f"value head size {v_channels} != kv_channels {self.hidden_size_per_attention_head}")
