"""The Triton quantizer against its torch oracle, bit for bit (run on a GPU machine)."""

import pytest
import torch

from async_rl.weights import fp8_triton
from async_rl.weights.fp8 import quantize_blockwise_reference, quantize_channelwise

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not fp8_triton.available(), reason="needs a CUDA GPU and Triton")]


@pytest.mark.parametrize("shape", [(128, 128), (256, 384), (200, 300), (1, 7), (3584, 512), (130, 129)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("pow2", [False, True])
def test_triton_equals_the_torch_oracle_bit_for_bit(shape, dtype, pow2):
    torch.manual_seed(0)
    w = (torch.randn(shape, device="cuda") * torch.logspace(-4, 2, shape[1], device="cuda")).to(dtype)
    w[: min(shape[0], 128), : min(shape[1], 128)] = 0  # an all-zero block
    q_t, s_t = fp8_triton.quantize_blockwise(w, pow2_scale=pow2)
    q_r, s_r = quantize_blockwise_reference(w, pow2_scale=pow2)
    assert q_t.dtype == torch.float8_e4m3fn and q_t.shape == w.shape
    assert torch.equal(s_t, s_r)
    assert torch.equal(q_t.view(torch.uint8), q_r.view(torch.uint8))


def test_non_contiguous_input_is_quantized_like_its_contiguous_copy():
    w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16).t()
    q_t, s_t = fp8_triton.quantize_blockwise(w)
    q_r, s_r = quantize_blockwise_reference(w.contiguous())
    assert torch.equal(q_t.view(torch.uint8), q_r.view(torch.uint8)) and torch.equal(s_t, s_r)


def test_one_launch_for_many_tensors_of_mixed_shapes_and_dtypes():
    torch.manual_seed(1)
    weights = [torch.randn(s, device="cuda", dtype=d) for s, d in
               [((300, 200), torch.bfloat16), ((128, 1000), torch.float32), ((7, 3), torch.bfloat16), ((512, 512), torch.float16)]]
    for w, (q, s) in zip(weights, fp8_triton.quantize_blockwise_many(weights, pow2_scale=True)):
        q_r, s_r = quantize_blockwise_reference(w, pow2_scale=True)
        assert torch.equal(q.view(torch.uint8), q_r.view(torch.uint8)) and torch.equal(s, s_r)


@pytest.mark.parametrize("shape", [(1, 7), (200, 300), (512, 18944), (3584, 1024)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_channelwise_kernel_equals_its_torch_oracle_bit_for_bit(shape, dtype):
    torch.manual_seed(2)
    w = (torch.randn(shape, device="cuda") * torch.logspace(-4, 2, shape[0], device="cuda")[:, None]).to(dtype)
    w[0] = 0  # an all-zero row gets scale 1
    mixed = [w, torch.randn(shape[::-1], device="cuda", dtype=torch.bfloat16)]
    for x, (q, s) in zip(mixed, fp8_triton.quantize_channelwise_many(mixed)):
        q_r, s_r = quantize_channelwise(x)
        assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape and s.shape == (x.shape[0], 1)
        assert torch.equal(s, s_r)
        assert torch.equal(q.view(torch.uint8), q_r.view(torch.uint8))
