"""Per-token log-probs and entropies read straight off the logits, without float32 copies of them.

Scoring a response the plain way (gather the response rows, `.float() / temperature`, log-softmax, entropy)
writes several float32 tensors of [tokens, vocabulary] and keeps them for the backward pass. With a 152k
vocabulary and 16k response tokens each is 10 GB: on a 4-layer slice of a 7B model those passes cost about a
third of the training step and much of its peak memory. Here the forward pass reduces every scored row of
the logits to four numbers (max, partition function, mean logit, target logit) and the backward pass
recomputes the softmax and writes the gradient straight into the logits' dtype. On a GPU with Triton both
are one kernel over each row; elsewhere the same arithmetic runs in torch on a bounded chunk of rows.

Under tensor parallelism each rank holds a slice of the vocabulary: the per-row numbers are combined over
the group (one max, one sum), and each rank's backward touches only its slice, with nothing to communicate.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

CHUNK_ELEMENTS = 1 << 26  # float32 elements per chunk of the torch path: 256 MB of temporaries at a time


def token_log_probs(
    logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, temperature: float, *,
    vocab_start: int = 0, group: dist.ProcessGroup | None = None, with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits[r] / temperature)[t] for each (r, t) in zip(rows, targets), and the entropy of that
    distribution when `with_entropy` (else None); both float32 of shape [len(rows)].

    `logits` [tokens, vocab_part] is this rank's vocabulary slice starting at id `vocab_start`; `targets`
    are global ids; `rows` must be distinct (the backward writes each row's gradient once); `group` is the
    tensor-parallel group over which the vocabulary is split, None when it is not.
    """
    log_probs, entropy = _TokenLogProbs.apply(logits, rows, targets, temperature, vocab_start, group)
    return log_probs, entropy if with_entropy else None


def _row_stats(logits: torch.Tensor, rows: torch.Tensor, inv_t: float) -> tuple[torch.Tensor, ...]:
    """Per row of logits[rows] * inv_t: max m, sum_exp = sum exp(x - m), spread = sum exp(x - m) (x - m)."""
    if logits.is_cuda:
        from async_rl.trainer import token_log_probs_triton

        return token_log_probs_triton.row_stats(logits, rows, inv_t)
    out = torch.empty(3, len(rows), dtype=torch.float32, device=logits.device)
    for chunk in _chunks(rows, logits.shape[-1]):
        x = logits[rows[chunk]].float() * inv_t
        peak = x.max(-1).values
        x -= peak[:, None]
        e = x.exp()
        out[0, chunk], out[1, chunk], out[2, chunk] = peak, e.sum(-1), (e * x).sum(-1)
    return out[0], out[1], out[2]


def _write_grad(grad: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, local_targets: torch.Tensor,
                log_z: torch.Tensor, entropy: torch.Tensor, g_lp: torch.Tensor, g_h: torch.Tensor, inv_t: float):
    """grad[rows] = d(g_lp . log p[target] + g_h . H) / d logits, with p = softmax(logits[rows] * inv_t).

    d log p[t] / dx = onehot(t) - p and dH / dx = -p (log p + H), each times inv_t for the temperature."""
    if logits.is_cuda:
        from async_rl.trainer import token_log_probs_triton

        token_log_probs_triton.write_grad(grad, logits, rows, local_targets, log_z, entropy, g_lp, g_h, inv_t)
        return
    for chunk in _chunks(rows, logits.shape[-1]):
        log_p = logits[rows[chunk]].float() * inv_t - log_z[chunk, None]
        p = log_p.exp()
        g = -p * (g_lp[chunk, None] + g_h[chunk, None] * (log_p + entropy[chunk, None]))
        t = local_targets[chunk]
        inside = t >= 0
        g[inside.nonzero()[:, 0], t[inside]] += g_lp[chunk][inside]
        grad[rows[chunk]] = (g * inv_t).to(grad.dtype)


def _chunks(rows: torch.Tensor, vocab: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // vocab)
    return [slice(i, i + step) for i in range(0, len(rows), step)]


class _TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, rows, targets, temperature, vocab_start, group):
        inv_t = 1.0 / temperature
        logits = logits.contiguous()  # the kernels step through each row with unit stride
        part = logits.shape[-1]
        local = targets - vocab_start
        inside = (local >= 0) & (local < part)
        local_targets = torch.where(inside, local, -1)
        picked = logits[rows, local.clamp(0, part - 1)].float() * inv_t
        target_logit = torch.where(inside, picked, 0.0)
        peak, sum_exp, spread = _row_stats(logits, rows, inv_t)
        top = peak.clone()
        if group is not None:
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        scale = (peak - top).exp()
        # rescaled to the global max: sum exp(x - top), sum exp(x - top) (x - top), and the target's logit
        sums = torch.stack([sum_exp * scale, scale * (spread + (peak - top) * sum_exp), target_logit])
        if group is not None:
            dist.all_reduce(sums, group=group)
        log_z = top + sums[0].log()
        entropy = sums[0].log() - sums[1] / sums[0]
        ctx.save_for_backward(logits, rows, local_targets, log_z, entropy)
        ctx.inv_t = inv_t
        return sums[2] - log_z, entropy

    @staticmethod
    def backward(ctx, g_lp, g_h):  # an output nobody used gets a zero gradient here (materialized by autograd)
        logits, rows, local_targets, log_z, entropy = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        _write_grad(grad, logits, rows, local_targets, log_z, entropy, g_lp.float().contiguous(),
                    g_h.float().contiguous(), ctx.inv_t)
        return grad, None, None, None, None, None
