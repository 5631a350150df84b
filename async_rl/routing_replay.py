"""Routing replay for MoE policies (`--use-routing-replay`, R3): the trainer routes each token to the experts the
rollout engine routed it to.

An FP8 or slightly stale engine sees hidden states a little off the trainer's, and where a token's top-k experts
are nearly tied the two pick different experts: that token's log-prob then differs by far more than the
quantization noise, and importance weights cannot tell a real policy change from a routing flip. Replaying the
engine's choices in the trainer's forward leaves only the numeric difference. The gate weights still train: the
mixing weights are the trainer's own router probabilities, taken at the replayed experts.

Layout, as SGLang returns it (`return_routed_experts`): for a sample of L tokens (prompt and response), an integer
tensor [L - 1, layers, top_k], the experts of every position but the last (whose output scores nothing).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

NO_REPLAY = -1  # a position without a recorded choice (padding, a sequence's last token) routes itself


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The top-k routers of a Hugging Face MoE model, in layer order (a module returning logits, scores, indices)."""
    return [m for m in model.modules() if type(m).__name__.endswith("TopKRouter") and hasattr(m, "top_k")]


class RoutingRecorder:
    """Records the experts every router of `model` picks, per forward call since `start()`."""

    def __init__(self, model: nn.Module):
        self.routers = moe_routers(model)
        self.calls: list[list[torch.Tensor]] = [[] for _ in self.routers]
        for layer, router in enumerate(self.routers):
            router.register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def record(module: nn.Module, args, output) -> None:
            self.calls[layer].append(output[2].detach().to("cpu", torch.int16))
        return record

    def start(self) -> None:
        self.calls = [[] for _ in self.routers]

    def call(self, index: int) -> torch.Tensor:
        """The experts of forward call `index`: [rows, layers, top_k]."""
        return torch.stack([calls[index] for calls in self.calls], dim=1)

    def per_sample(self, batch: int, context_lens: list[int], new_tokens: list[int]) -> list[torch.Tensor]:
        """After a left-padded prefill and one decode call per token: each row's experts for its context and the
        new tokens it fed back, [context + new - 1, layers, top_k] (its last token was never fed)."""
        calls = [self.call(index) for index in range(len(self.calls[0]))]
        prefill = calls[0].view(batch, -1, *calls[0].shape[1:])
        decode = torch.stack(calls[1:], dim=1) if len(calls) > 1 else prefill[:, :0]  # [batch, steps, layers, top_k]
        width = prefill.shape[1]
        return [torch.cat([prefill[i, width - context:], decode[i, : max(new - 1, 0)]])[: context + new - 1]
                for i, (context, new) in enumerate(zip(context_lens, new_tokens))]


@contextlib.contextmanager
def replay_routing(model: nn.Module, experts: torch.Tensor) -> Iterator[None]:
    """Within this block every forward of `model` routes row r of its flattened [batch * seq] tokens to
    `experts[r]` ([rows, layers, top_k]; NO_REPLAY entries keep the router's own choice)."""
    routers = moe_routers(model)
    if experts.shape[1] != len(routers):
        raise ValueError(f"routing replay: {experts.shape[1]} recorded layers for a model with {len(routers)} MoE layers")

    def hook(layer: int):
        def replace(module: nn.Module, args, output):
            logits, _, computed = output
            wanted = experts[:, layer].to(computed.device, computed.dtype)
            indices = torch.where(wanted >= 0, wanted, computed)
            scores = torch.softmax(logits, dim=-1, dtype=torch.float).gather(1, indices)
            if module.norm_topk_prob:
                scores = scores / scores.sum(dim=-1, keepdim=True)
            return logits, scores.to(logits.dtype), indices
        return replace

    handles = [router.register_forward_hook(hook(layer)) for layer, router in enumerate(routers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def padded_routing(rows: list[torch.Tensor], seq_len: int) -> torch.Tensor:
    """Per-sample routing ([tokens - 1, layers, top_k]) laid out like a right-padded batch:
    [batch, seq_len, layers, top_k], NO_REPLAY where nothing was recorded (padding, each row's last token)."""
    out = torch.full((len(rows), seq_len, *rows[0].shape[1:]), NO_REPLAY, dtype=torch.long)
    for i, routing in enumerate(rows):
        out[i, : routing.shape[0]] = routing.long()
    return out


def padded_rows(routing: torch.Tensor, rows: int, seq: int) -> torch.Tensor:
    """[batch, seq, layers, top_k] as a right-padded [rows, seq] batch reaches Megatron's routers: sequence-major."""
    pad = (0, 0, 0, 0, 0, seq - routing.shape[1], 0, rows - routing.shape[0])
    return torch.nn.functional.pad(routing, pad, value=NO_REPLAY).transpose(0, 1).flatten(0, 1)


def packed_rows(routing: torch.Tensor, attention_mask: torch.Tensor, total: int) -> torch.Tensor:
    """[batch, seq, layers, top_k] for rows packed back to back (THD), padded to `total` tokens."""
    packed = routing[attention_mask.bool()]
    return torch.nn.functional.pad(packed, (0, 0, 0, 0, 0, total - packed.shape[0]), value=NO_REPLAY)


@contextlib.contextmanager
def megatron_routing_replay(model: nn.Module, experts: torch.Tensor) -> Iterator[None]:
    """Within this block Megatron's routers (built with `moe_enable_routing_replay`) take token r to `experts[r]`
    ([tokens, layers, top_k], in the order the routers see the tokens). Positions without a record (padding, each
    row's last token, whose outputs score nothing) get experts 0..k-1."""
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    replays = [m.router_replay for m in model.modules() if getattr(m, "router_replay", None) is not None]
    if experts.shape[1] != len(replays):
        raise ValueError(f"routing replay: {experts.shape[1]} recorded layers for a model with {len(replays)} MoE layers")
    fallback = torch.arange(experts.shape[2], device=experts.device)
    filled = torch.where(experts >= 0, experts, fallback).long()
    for layer, replay in enumerate(replays):
        replay.set_target_indices(filled[:, layer].contiguous())
        replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
    try:
        yield
    finally:
        for replay in replays:
            replay.clear_indices()
            replay.clear_router_replay_action()
