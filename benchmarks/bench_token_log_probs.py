"""Scoring response tokens from the logits, forward + backward: the plain float32 log-softmax against
`async_rl.trainer.token_log_probs` (Triton kernels on a GPU), at the shape of a 7B-slice training micro-batch.

    python benchmarks/bench_token_log_probs.py --tokens 16384 --vocab 152064

Both compute the log-prob of each token's target and the entropy of its distribution at a temperature, and
backpropagate a loss of both into BF16 logits. The plain path is what the trainers did before: pick the rows,
`.float() / temperature`, logsumexp, log-softmax for the entropy. Times are medians of `--repeats` after a
warm-up; peak memory is what the pass allocated beyond the logits and their gradient.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from async_rl.trainer.token_log_probs import token_log_probs


def plain(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, temperature: float):
    picked = logits[rows].float() / temperature
    log_z = torch.logsumexp(picked, -1)
    log_p = torch.log_softmax(picked, -1)
    return picked.gather(-1, targets[:, None]).squeeze(-1) - log_z, -(log_p.exp() * log_p).sum(-1)


def fused(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, temperature: float):
    return token_log_probs(logits, rows, targets, temperature, with_entropy=True)


def measure(fn, logits, rows, targets, repeats: int) -> tuple[float, float]:
    """Median seconds of forward + backward, and the peak GiB allocated beyond the logits and their gradient."""
    times = []
    for i in range(repeats + 1):
        leaf = logits.detach().requires_grad_(True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        log_probs, entropy = fn(leaf, rows, targets, 0.8)
        (log_probs.sum() - 0.01 * entropy.sum()).backward()
        end.record()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base - leaf.grad.numel() * leaf.grad.element_size()) / 2**30
        if i:
            times.append(start.elapsed_time(end) / 1e3)
        del leaf, log_probs, entropy
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="rows of logits (all of them scored)")
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(args.tokens, args.vocab, device="cuda", generator=gen) * 3).to(torch.bfloat16)
    rows = torch.arange(args.tokens, device="cuda")
    targets = torch.randint(0, args.vocab, (args.tokens,), device="cuda", generator=gen)
    paths = (("plain", plain), ("fused", fused))
    results = {name: measure(fn, logits, rows, targets, args.repeats) for name, fn in paths}
    print(f"{torch.cuda.get_device_name()}, {args.tokens} tokens x {args.vocab} vocabulary, BF16 logits\n")
    print("| path | forward + backward ms | vs plain | extra peak GiB |\n|---|---:|---:|---:|")
    for name, (seconds, peak) in results.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {results['plain'][0] / seconds:.2f}x | {peak:.1f} |")


if __name__ == "__main__":
    main()
