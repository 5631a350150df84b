"""The Triton kernels of token_log_probs against a float64 log-softmax, at a real vocabulary size."""

import pytest
import torch

from async_rl.trainer.token_log_probs import token_log_probs
from tests.trainer.test_token_log_probs import loss_and_grads, reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("vocab", [152064, 1000])  # many blocks of 4096 with a partial last one; one partial block
def test_triton_log_probs_entropy_and_gradients_match_float64(vocab):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(700, vocab, device="cuda", generator=gen) * 4).to(torch.bfloat16)
    logits[5, vocab - 1] = 80.0  # a row whose mass sits in the last, partial block
    rows = torch.randperm(700, device="cuda", generator=gen)[:500]
    targets = torch.randint(0, vocab, (500,), device="cuda", generator=gen)
    targets[(rows == 5).nonzero()] = vocab - 1
    weights = torch.randn(2, 500, device="cuda", generator=gen, dtype=torch.float64)
    fused = loss_and_grads(lambda *a: token_log_probs(*a, with_entropy=True), logits, rows, targets, 0.7, weights)
    plain = loss_and_grads(reference, logits, rows, targets, 0.7, weights)
    torch.testing.assert_close(fused[0], plain[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fused[1], plain[1], atol=1e-4, rtol=1e-5)
    # the gradient is rounded to BF16 once: about 3 significant digits
    torch.testing.assert_close(fused[2], plain[2], atol=1e-5, rtol=1e-2)
