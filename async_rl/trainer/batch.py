"""Packing samples into padded tensors for a forward pass, and reading response log-probs back out."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from async_rl.routing_replay import padded_routing
from async_rl.sample import Sample
from async_rl.trainer.token_log_probs import token_log_probs


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [batch, seq] prompt + response, right-padded
    attention_mask: torch.Tensor  # [batch, seq]
    response_start: torch.Tensor  # [batch] index of each row's first response token
    response_mask: torch.Tensor  # [batch, max_response] 1 on real response tokens
    loss_mask: torch.Tensor  # [batch, max_response]
    rollout_log_probs: torch.Tensor  # [batch, max_response]
    routed_experts: torch.Tensor | None = None  # [batch, seq, layers, top_k]: the engine's MoE routing to replay

    def to(self, device: torch.device) -> "PackedBatch":
        return PackedBatch(**{k: v.to(device) if v is not None else None for k, v in vars(self).items()})


def _pad(rows: list[list], width: int, value, dtype) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=dtype)


def pack(samples: list[Sample], pad_token_id: int, routing: bool = False) -> PackedBatch:
    """`routing`: carry the samples' recorded MoE routing (`--use-routing-replay`)."""
    max_response = max(1, max(s.response_length for s in samples))
    sequences = [s.prompt_tokens + s.response_tokens for s in samples]
    seq_len = max(len(seq) for seq in sequences)
    return PackedBatch(
        input_ids=_pad(sequences, seq_len, pad_token_id, torch.long),
        attention_mask=_pad([[1] * len(seq) for seq in sequences], seq_len, 0, torch.long),
        response_start=torch.tensor([len(s.prompt_tokens) for s in samples]),
        response_mask=_pad([[1] * s.response_length for s in samples], max_response, 0, torch.float32),
        loss_mask=_pad([list(s.loss_mask) for s in samples], max_response, 0, torch.float32),
        rollout_log_probs=_pad([list(s.rollout_log_probs) for s in samples], max_response, 0.0, torch.float32),
        routed_experts=replay_layout(samples, seq_len) if routing else None,
    )


def replay_layout(samples: list[Sample], seq_len: int) -> torch.Tensor:
    missing = [s.index for s in samples if s.routed_experts is None]
    if missing:
        raise ValueError(f"--use-routing-replay: samples {missing[:5]} came back from the engine without routed experts")
    return padded_routing([s.routed_experts for s in samples], seq_len)


def micro_batch_indices(samples: list[Sample], micro_batch_size: int, max_tokens: int | None = None,
                        packed: bool = False) -> list[list[int]]:
    """Micro-batches as index lists: `micro_batch_size` samples each, or, with a token budget, as many samples
    as fit in `max_tokens` tokens (longest first, so rows of similar length share a micro-batch). A padded
    micro-batch costs rows x longest row; a `packed` one (sequences back to back) the sum of its lengths.
    A sample longer than the budget gets a micro-batch of its own."""
    if max_tokens is None:
        return [list(range(i, min(i + micro_batch_size, len(samples)))) for i in range(0, len(samples), micro_batch_size)]
    lengths = [len(s.prompt_tokens) + s.response_length for s in samples]

    def cost(group: list[int]) -> int:  # rows sorted longest first: the group's first row is its longest
        return sum(lengths[j] for j in group) if packed else len(group) * lengths[group[0]]

    groups: list[list[int]] = []
    for i in sorted(range(len(samples)), key=lambda i: -lengths[i]):
        if groups and cost(groups[-1] + [i]) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _response_rows(batch: PackedBatch, row_offsets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows of the logits score the batch's response tokens, and the tokens they score, both [response
    tokens] in `response_mask` order. The logits are [batch * seq, vocab] flattened from [batch, seq, vocab],
    or, with `row_offsets`, the rows packed back to back, row i starting at token row_offsets[i]. The logit
    at position t predicts token t + 1, so response token j of a row is scored by the logit at
    response_start + j - 1."""
    width = batch.response_mask.shape[1]
    positions = batch.response_start[:, None] - 1 + torch.arange(width, device=batch.input_ids.device)
    if row_offsets is None:
        row_offsets = torch.arange(len(positions), device=positions.device) * batch.input_ids.shape[1]
    real = batch.response_mask.bool()
    targets = batch.input_ids.gather(1, (positions + 1).clamp(max=batch.input_ids.shape[1] - 1))
    return (row_offsets[:, None] + positions)[real], targets[real]


def _per_response_token(values: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Values in `_response_rows` order laid out as [batch, max_response], 0 past each response's end."""
    out = values.new_zeros(batch.response_mask.shape)
    out[batch.response_mask.bool()] = values
    return out


def score_responses(logits: torch.Tensor, batch: PackedBatch, temperature: float, *,
                    row_offsets: torch.Tensor | None = None, with_entropy: bool = False, vocab_start: int = 0,
                    group=None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits / temperature) of each response token, [batch, max_response] (0 past the end), and
    with `with_entropy` the entropy of each of those distributions. `logits` [tokens, vocab part] as in
    `_response_rows`; `vocab_start` and `group` as in `token_log_probs` (a tensor-parallel vocabulary slice)."""
    rows, targets = _response_rows(batch, row_offsets)
    log_probs, entropy = token_log_probs(logits, rows, targets, temperature, vocab_start=vocab_start, group=group,
                                         with_entropy=with_entropy)
    if with_entropy:
        return _per_response_token(log_probs, batch), _per_response_token(entropy, batch)
    return _per_response_token(log_probs, batch)


def response_log_probs(
    model: torch.nn.Module, batch: PackedBatch, temperature: float, *, with_entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`score_responses` of a Hugging Face model's logits. Temperature matches the rollout's, as the engine samples
    from that distribution."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return score_responses(logits.flatten(0, 1), batch, temperature, with_entropy=with_entropy)
