import math

import pytest
import torch

from async_rl.weights.fp8 import (
    FP8_E4M3_MAX,
    GRANULARITIES,
    checkpoint_granularity,
    dequantize,
    dequantize_blockwise,
    is_fp8_quantizable,
    quantization_config,
    quantize_activations,
    quantize_blockwise,
    quantize_many,
    round_up_to_power_of_two,
)
from async_rl.weights.sync import weight_buckets

E4M3_RELATIVE_STEP = 2.0**-4  # 3 mantissa bits: rounding moves a normal value by at most half of 2^-3


@pytest.mark.parametrize("shape", [(128, 128), (256, 384), (200, 300), (1, 7), (129, 130)])
def test_shapes_dtypes_and_block_scales(shape):
    torch.manual_seed(0)
    w = torch.randn(shape) * torch.logspace(-3, 1, shape[1])
    q, scale_inv = quantize_blockwise(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128))
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            block = w[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128]
            qb = q[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128].float()
            assert torch.isclose(scale_inv[i, j], block.abs().max() / FP8_E4M3_MAX)
            assert qb.abs().max() == FP8_E4M3_MAX  # the block's largest magnitude maps to the top of E4M3


def test_round_trip_error_is_within_fp8_rounding():
    torch.manual_seed(0)
    w = torch.randn(300, 500)
    q, scale_inv = quantize_blockwise(w)
    back = dequantize_blockwise(q, scale_inv, dtype=torch.float32)
    scales = scale_inv.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :500]
    subnormal_step = scales * 2.0**-9  # E4M3's smallest subnormal, in weight units
    assert torch.all((back - w).abs() <= E4M3_RELATIVE_STEP * w.abs() + subnormal_step)


def test_all_zero_blocks_get_unit_scale_and_zeros():
    w = torch.zeros(256, 256)
    w[200, 200] = 3.0
    q, scale_inv = quantize_blockwise(w)
    assert scale_inv[0, 0] == 1.0 and scale_inv[0, 1] == 1.0 and scale_inv[1, 0] == 1.0
    assert q[:128, :].float().abs().sum() == 0
    assert dequantize_blockwise(q, scale_inv, dtype=torch.float32)[200, 200] == 3.0


def test_power_of_two_scales_are_e8m0_and_never_clip():
    torch.manual_seed(0)
    w = torch.randn(256, 256) * 3.7
    q, scale_inv = quantize_blockwise(w, pow2_scale=True)
    assert torch.all(torch.frexp(scale_inv).mantissa == 0.5)  # exactly a power of two
    assert q.float().abs().max() <= FP8_E4M3_MAX and not torch.isnan(q.float()).any()
    x = torch.tensor([0.75, 1.0, 1.5, 3.0e-3, 2.0**-130])
    assert torch.equal(round_up_to_power_of_two(x), torch.tensor([1.0, 1.0, 2.0, 2.0**-8, 2.0**-126]))


def test_activation_rounding_is_per_token_and_128_channels():
    x = torch.ones(2, 256)
    x[0, :128] *= 1000.0  # a large group does not coarsen the other group or the other token
    rounded = quantize_activations(x)
    assert torch.equal(rounded, x)
    y = torch.randn(3, 200)
    assert torch.all((quantize_activations(y) - y).abs() <= E4M3_RELATIVE_STEP * y.abs() + y.abs().max() / 448 * 2.0**-9)


def test_only_attention_and_mlp_linear_weights_are_quantized():
    m = torch.zeros(4, 4)
    assert is_fp8_quantizable("model.layers.0.self_attn.q_proj.weight", m)
    assert is_fp8_quantizable("model.layers.3.mlp.down_proj.weight", m)
    assert not is_fp8_quantizable("model.layers.0.self_attn.q_proj.bias", torch.zeros(4))
    assert not is_fp8_quantizable("model.embed_tokens.weight", m)
    assert not is_fp8_quantizable("lm_head.weight", m)
    assert not is_fp8_quantizable("model.layers.0.input_layernorm.weight", torch.zeros(4))


def test_buckets_respect_the_size_and_carry_fp8_pairs():
    tensors = [("model.layers.0.mlp.up_proj.weight", torch.randn(64, 32)),
               ("model.layers.0.input_layernorm.weight", torch.randn(32)),
               ("model.layers.1.mlp.up_proj.weight", torch.randn(64, 32))]
    plain = list(weight_buckets(tensors, bucket_bytes=64 * 32 * 4 + 32 * 4))
    assert [[n for n, _ in b] for b in plain] == [[tensors[0][0], tensors[1][0]], [tensors[2][0]]]
    fp8 = [item for b in weight_buckets(tensors, bucket_bytes=1 << 20, fp8="block") for item in b]
    names = [n for n, _ in fp8]
    assert names == ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight_scale_inv",
                     "model.layers.0.input_layernorm.weight", "model.layers.1.mlp.up_proj.weight",
                     "model.layers.1.mlp.up_proj.weight_scale_inv"]
    assert fp8[0][1].dtype == torch.float8_e4m3fn and fp8[1][1].dtype == torch.float32
    assert fp8[2][1].dtype == torch.float32


def test_fp8_buckets_count_the_bytes_they_send_so_they_hold_twice_the_linear_weights():
    tensors = [(f"model.layers.{i}.mlp.up_proj.weight", torch.randn(64, 32, dtype=torch.bfloat16)) for i in range(4)]
    size = 2 * 64 * 32 * 2  # two BF16 weights
    assert [len(b) for b in weight_buckets(tensors, bucket_bytes=size)] == [2, 2]
    assert [len(b) for b in weight_buckets(tensors, bucket_bytes=size, fp8="block")] == [8]  # 4 weights + scales


def test_channel_buckets_carry_one_scale_per_output_row_and_round_trip():
    w = torch.randn(64, 32) * torch.linspace(0.01, 10, 64)[:, None]  # rows of very different ranges
    [(name, q), (scale_key, scale)] = next(weight_buckets([("model.layers.0.mlp.up_proj.weight", w)],
                                                          bucket_bytes=1 << 20, fp8="channel"))
    assert scale_key == "model.layers.0.mlp.up_proj.weight_scale" and scale.shape == (64, 1)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((64,), 448.0))  # each row uses the full range
    back = dequantize(q, scale, "channel", dtype=torch.float32)
    assert ((back - w).abs() <= w.abs().amax(dim=1, keepdim=True) / 16).all()  # E4M3 keeps 3 mantissa bits


def test_an_unknown_granularity_is_refused():
    with pytest.raises(ValueError, match="unknown FP8 granularity 'tensor'"):
        quantize_many([torch.randn(4, 4)], "tensor")


def test_checkpoint_granularity_reads_the_quantization_config():
    for g in GRANULARITIES:
        assert checkpoint_granularity({"quantization_config": quantization_config(g)}) == g
    assert checkpoint_granularity({}) is None
