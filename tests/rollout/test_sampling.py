import torch

from async_rl.rollout.sampling import sample_tokens


def test_log_prob_is_that_of_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 64)
    tokens, log_probs = sample_tokens(logits, temperature=0.7, top_p=1.0, generator=torch.Generator().manual_seed(0))
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs, expected)


def test_top_p_draws_only_from_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two (0.5 < 0.7 <= 0.8)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    tokens, _ = sample_tokens(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) == {0, 1}
    assert abs((tokens == 0).float().mean().item() - 0.5 / 0.8) < 0.04


def test_top_k_draws_only_among_the_k_most_likely_and_keeps_full_log_probs():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]] * 512)
    generator = torch.Generator().manual_seed(0)
    greedy, log_probs = sample_tokens(logits, temperature=1.0, top_p=1.0, generator=generator, top_k=1)
    assert greedy.eq(1).all()
    assert torch.allclose(log_probs, torch.log_softmax(logits, dim=-1)[:, 1])
    two, _ = sample_tokens(logits, temperature=1.0, top_p=1.0, generator=generator, top_k=2)
    assert set(two.tolist()) == {1, 2}
