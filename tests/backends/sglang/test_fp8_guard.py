"""An FP8 SGLang engine accepts BF16 tensors and then generates garbage; our guard refuses them first."""

import pytest
import torch

from async_rl.backends.sglang.engine import check_fp8_bucket
from async_rl.weights.fp8 import quantize_many, scale_name

NAME = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("granularity", ["block", "channel"])
def test_fp8_pairs_pass_and_norms_stay_high_precision(granularity):
    [(q, scale)] = quantize_many([torch.randn(256, 256)], granularity)
    check_fp8_bucket([(NAME, q), (scale_name(NAME, granularity), scale), ("model.norm.weight", torch.ones(256))],
                     granularity)


@pytest.mark.parametrize("bucket, message", [
    ([(NAME, torch.randn(256, 256, dtype=torch.bfloat16))], "was sent torch.bfloat16"),
    ([(NAME, torch.zeros(256, 256, dtype=torch.float8_e4m3fn))], "without its"),
    ([(NAME, torch.zeros(256, 256, dtype=torch.float8_e4m3fn)), (NAME + "_scale_inv", torch.ones(2, 2, dtype=torch.bfloat16))],
     "must be float32"),
])
def test_wrong_dtypes_or_missing_scales_are_refused_with_the_name(bucket, message):
    with pytest.raises(ValueError, match=message):
        check_fp8_bucket(bucket, "block")


def test_block_scales_sent_to_a_channel_engine_are_refused():
    [(q, scale)] = quantize_many([torch.randn(256, 256)], "block")
    with pytest.raises(ValueError, match="channel-wise FP8 weights, whose scales are"):
        check_fp8_bucket([(NAME, q), (NAME + "_scale_inv", scale)], "channel")
