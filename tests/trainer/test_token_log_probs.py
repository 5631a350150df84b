import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from async_rl.net import free_port
from async_rl.trainer import token_log_probs as tlp


def reference(logits, rows, targets, temperature):
    """Plain float64 log-softmax and entropy of the picked rows."""
    log_p = torch.log_softmax(logits[rows].double() / temperature, -1)
    return log_p.gather(-1, targets[:, None]).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


def loss_and_grads(fn, logits, rows, targets, temperature, weights):
    leaf = logits.detach().clone().requires_grad_(True)
    log_probs, entropy = fn(leaf, rows, targets, temperature)
    loss = (weights[0] * log_probs).sum() + (weights[1] * entropy).sum()
    loss.backward()
    return log_probs.detach().double(), entropy.detach().double(), leaf.grad.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_log_probs_entropy_and_gradients_match_the_plain_log_softmax(monkeypatch, dtype, temperature):
    monkeypatch.setattr(tlp, "CHUNK_ELEMENTS", 3 * 50)  # three rows per chunk: the last chunk is short
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(12, 50, generator=gen) * 4).to(dtype)
    logits[3, 7] = 60.0  # one confident row: exp of the unshifted logit would overflow float32
    rows = torch.tensor([0, 2, 3, 5, 6, 7, 9, 11])
    targets = torch.randint(0, 50, (8,), generator=gen)
    weights = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    fused = loss_and_grads(lambda *a: tlp.token_log_probs(*a, with_entropy=True), logits, rows, targets, temperature,
                           weights)
    plain = loss_and_grads(reference, logits, rows, targets, temperature, weights)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in zip(fused, plain):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert fused[2][[1, 4, 8, 10]].abs().max() == 0  # rows nobody scored get no gradient


def split_rank(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks, each holding half of the vocabulary, as under tensor parallelism."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        logits, rows, targets, weights = split_case()
        part = logits[:, rank * 20:(rank + 1) * 20]
        result = loss_and_grads(lambda *a: tlp.token_log_probs(*a, vocab_start=rank * 20, group=dist.group.WORLD,
                                                               with_entropy=True), part, rows, targets, 0.9, weights)
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def split_case():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=gen) * 3
    logits[2, 30] = 50.0  # the max of this row lives on the second rank only
    weights = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    return logits, torch.arange(6), torch.tensor([0, 19, 20, 39, 5, 25]), weights


def test_two_ranks_each_holding_half_the_vocabulary_get_the_whole_result(tmp_path):
    """Each rank's log-probs and entropies are those of the whole vocabulary, and its gradient is the whole
    gradient's columns of its slice."""
    logits, rows, targets, weights = split_case()
    whole = loss_and_grads(reference, logits, rows, targets, 0.9, weights)
    mp.spawn(split_rank, args=(free_port("127.0.0.1"), str(tmp_path / "rank")), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank.{r}") for r in range(2)]
    for log_probs, entropy, _ in ranks:
        torch.testing.assert_close(log_probs, whole[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy, whole[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([ranks[0][2], ranks[1][2]], 1), whole[2], atol=1e-5, rtol=1e-5)


def test_no_rows_gives_empty_results_and_a_zero_gradient():
    logits = torch.randn(3, 10, requires_grad=True)
    log_probs, entropy = tlp.token_log_probs(logits, torch.tensor([], dtype=torch.long),
                                             torch.tensor([], dtype=torch.long), 1.0, with_entropy=True)
    assert log_probs.shape == entropy.shape == (0,)
    (log_probs.sum() + entropy.sum()).backward()
    assert logits.grad.abs().max() == 0
