"""`local` rollout backend: batched sampling with a KV cache from a Hugging Face causal LM, in PyTorch.

It stands where an SGLang server stands in production and honours the same `RolloutEngine` interface,
so the orchestrator cannot tell them apart.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from async_rl.backends.local.fp8_linear import convert_to_fp8
from async_rl.rollout.custom_generate import CustomGenerateMixin
from async_rl.rollout.engine import FINISHED_AT, SamplingParams, WeightVersionMixin
from async_rl.rollout.sampling import sample_tokens
from async_rl.routing_replay import RoutingRecorder
from async_rl.sample import FINISHED_STATUSES, Sample, SampleStatus
from async_rl.weights.checksums import digests
from async_rl.weights.fp8 import FP8_SCALE_SUFFIXES, is_fp8_quantizable, quantize_many, scale_name
from async_rl.weights.hf_layout import destination, unstack_experts
from async_rl.weights.transports.object_store import from_transport

# Recent transformers rename the forward's `past_key_values` to `cache` and warn on every call; the old name works
# in every version this package supports, so the warning (one per engine, in every log) says nothing to a user.
warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


class LocalEngine(WeightVersionMixin, CustomGenerateMixin):
    """One engine process holding the policy weights; Ray runs each instance as its own actor."""

    def __init__(
        self,
        hf_checkpoint: str,
        *,
        seed: int = 0,
        num_threads: int | None = None,
        device: str = "cpu",
        fp8: str | None = None,
        record_routing: bool = False,
    ):
        """`fp8` ("block" or "channel") emulates an FP8 engine of that granularity: attention and MLP linear
        layers keep E4M3 weights with float32 scales and round their inputs through E4M3 per token (and per 128
        channels for block weights); a MoE model's experts stay in full precision (and take no FP8 pushes).
        `record_routing`: a MoE model's samples carry the experts each token was routed to (routing replay)."""
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_checkpoint)
        self.model = AutoModelForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).to(self.device)
        self.model.eval()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id
        self.fp8 = fp8
        self.routing = RoutingRecorder(self.model) if record_routing else None
        self.fp8_modules = set(convert_to_fp8(self.model, is_fp8_quantizable, fp8)) if fp8 else set()
        self.weight_version = 0
        self.paused = False
        self._aborted: set[int] = set()  # request ids to stop; `abort` runs on another thread than `generate`
        self._abort_lock = threading.Lock()

    def _is_aborted(self, request_id: int | None) -> bool:
        with self._abort_lock:
            return request_id in self._aborted

    @torch.no_grad()
    def generate(self, samples: list[Sample], params: SamplingParams, request_id: int | None = None) -> list[Sample]:
        """Sample responses; a sample that already holds response tokens (a partial rollout) is continued.

        When `abort(request_id)` arrives, generation stops after the current token: every unfinished
        sample comes back ABORTED with the tokens and log-probs produced so far, ready to be continued.
        """
        if self.paused:
            raise RuntimeError("engine is paused; resume() it before generating")
        try:
            return self._generate(samples, params, request_id)
        finally:
            with self._abort_lock:
                self._aborted.discard(request_id)

    def _generate(self, samples: list[Sample], params: SamplingParams, request_id: int | None) -> list[Sample]:
        batch = len(samples)
        contexts = [s.prompt_tokens + s.response_tokens for s in samples]
        # finished samples of a continued chunk stay as they are
        budget = [0 if s.status in FINISHED_STATUSES else params.remaining_tokens(s) for s in samples]
        prompt_len = max(len(c) for c in contexts)
        input_ids = torch.full((batch, prompt_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, prompt_len), dtype=torch.long)
        for i, c in enumerate(contexts):  # left padding keeps every row's next token at the same column
            input_ids[i, prompt_len - len(c):] = torch.tensor(c)
            attention_mask[i, prompt_len - len(c):] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

        if self.routing:
            self.routing.start()
        cache = DynamicCache()
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=cache, use_cache=True,
        ).logits[:, -1]
        next_position = position_ids[:, -1] + 1
        tokens = [list(s.response_tokens) for s in samples]
        log_probs = [list(s.rollout_log_probs) for s in samples]
        budget_left = torch.tensor(budget, device=self.device)
        stop_ids = {self.eos_token_id, *params.stop_token_ids}
        stops = torch.tensor(sorted(stop_ids), device=self.device)
        finished = budget_left <= 0
        aborted = self._is_aborted(request_id)
        for step in range(max(budget)):
            if aborted:
                break
            token, token_log_prob = sample_tokens(logits, params.temperature, params.top_p, self.generator, params.top_k)
            for i in (~finished).nonzero().flatten().tolist():
                tokens[i].append(int(token[i]))
                log_probs[i].append(float(token_log_prob[i]))
            finished |= torch.isin(token, stops) | (budget_left <= step + 1)
            if bool(finished.all()):
                break
            aborted = self._is_aborted(request_id)
            attention_mask = torch.cat([attention_mask, torch.ones((batch, 1), dtype=torch.long, device=self.device)], 1)
            logits = self.model(
                input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position[:, None],
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
            next_position = next_position + 1

        finished_at = time.time()
        routing = self.routing.per_sample(batch, [len(c) for c in contexts],
                                          [len(t) - s.response_length for t, s in zip(tokens, samples)]) if self.routing else None
        for i, (s, toks, lps, done, todo) in enumerate(zip(samples, tokens, log_probs, finished.tolist(), budget)):
            if todo <= 0:
                continue
            if routing is not None:
                s.routed_experts = routing[i]
            if s.response_length == 0:  # a continued sample keeps the (older) version it started with
                s.weight_version = self.weight_version
            s.response_tokens = toks
            s.rollout_log_probs = lps
            s.loss_mask = s.loss_mask + [1] * (len(toks) - len(s.loss_mask))  # observations a plugin added stay 0
            s.response = self.tokenizer.decode(toks, skip_special_tokens=True)
            if not done:
                s.status = SampleStatus.ABORTED
            else:
                s.status = SampleStatus.COMPLETED if toks and toks[-1] in stop_ids else SampleStatus.TRUNCATED
            s.metadata[FINISHED_AT] = finished_at
        return samples

    def abort(self, request_ids: Sequence[int]) -> None:
        """Stop these `generate` calls, running or queued, at the next token (they return ABORTED samples).

        Called on a separate thread (the actor's control concurrency group) while a `generate` runs.
        """
        with self._abort_lock:
            self._aborted.update(request_ids)

    @torch.no_grad()
    def load_weights(self, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Copy one bucket of weights in (Hugging Face names).

        An FP8 layer takes float8 bytes and their scales as they come; sent a high-precision weight
        instead, it quantizes it here (correct, but the slow path FP8 weight sync exists to avoid).
        """
        targets = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        for name, tensor in named_tensors:
            module_name = name.rsplit(".", 1)[0]
            fp8_payload = tensor.dtype in (torch.uint8, torch.float8_e4m3fn) or name.endswith(FP8_SCALE_SUFFIXES)
            if fp8_payload and module_name not in self.fp8_modules:
                raise ValueError(f"{name}: FP8 data for a weight this engine keeps in full precision (the local engine "
                                 "emulates FP8 in linear layers, not in MoE experts)")
            target = destination(name, targets)
            tensor = from_transport(tensor, target.dtype)
            if module_name in self.fp8_modules and name.endswith(".weight") and tensor.dtype != torch.float8_e4m3fn:
                [(tensor, scale)] = quantize_many([tensor], self.fp8)
                targets[scale_name(name, self.fp8)].copy_(scale)
            target.copy_(tensor.to(target.device))

    def weight_digests(self) -> dict[str, tuple[str, str]]:
        held = itertools.chain(self.model.named_parameters(), self.model.named_buffers())
        return digests(unstack_experts(held))

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def health(self) -> dict:
        return {"pid": os.getpid(), "weight_version": self.weight_version, "paused": self.paused}

    def shutdown(self) -> None:
        self.model = None
