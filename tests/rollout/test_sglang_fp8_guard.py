"""An FP8 SGLang engine accepts BF16 tensors and then generates garbage; our guard refuses them first."""

import pytest
import torch

from async_rl.rollout.sglang_engine import check_fp8_bucket
from async_rl.weights.fp8 import quantize_blockwise

NAME = "model.layers.0.self_attn.q_proj.weight"


def test_fp8_pairs_pass_and_norms_stay_high_precision():
    q, scale = quantize_blockwise(torch.randn(256, 256))
    check_fp8_bucket([(NAME, q), (NAME + "_scale_inv", scale), ("model.norm.weight", torch.ones(256))])


@pytest.mark.parametrize("bucket, message", [
    ([(NAME, torch.randn(256, 256, dtype=torch.bfloat16))], "was sent torch.bfloat16"),
    ([(NAME, torch.zeros(256, 256, dtype=torch.float8_e4m3fn))], "without its"),
    ([(NAME, torch.zeros(256, 256, dtype=torch.float8_e4m3fn)), (NAME + "_scale_inv", torch.ones(2, 2, dtype=torch.bfloat16))],
     "must be float32"),
])
def test_wrong_dtypes_or_missing_scales_are_refused_with_the_name(bucket, message):
    with pytest.raises(ValueError, match=message):
        check_fp8_bucket(bucket)
