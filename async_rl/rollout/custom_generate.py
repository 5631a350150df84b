"""`--custom-generate-function-path pkg.module:fn`: a user's async function drives the engine for each sample.

It is how multi-turn and tool-calling rollouts are written. The function runs inside the engine actor, next to
the model, once per sample of a chunk, all of them concurrently:

    async def generate(client: EngineClient, sample: Sample, params: SamplingParams) -> Sample

`await client.generate(sample, params)` is one policy turn: the engine continues the sample from its prompt and
response so far and appends the new tokens (trained, with their rollout log-probs). `client.append_observation`
appends text the policy did not write, a tool's output, with a zero loss mask. The turns that the samples of a
chunk ask for at the same moment go to the engine as one batch, so a multi-turn chunk still generates in batches.
`--rollout-max-response-len` bounds a sample's whole response, turns and observations together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any, Awaitable, Callable

from async_rl.errors import UserInputError
from async_rl.rollout.engine import SamplingParams
from async_rl.sample import FINISHED_STATUSES, Sample, SampleStatus
from rewards.registry import load_function

FLAG = "--custom-generate-function-path"
GenerateFunction = Callable[["EngineClient", Sample, SamplingParams], Awaitable[Sample]]
RunTurns = Callable[[list[Sample], SamplingParams], list[Sample]]


@functools.cache
def load_generate_function(path: str) -> GenerateFunction:
    fn = load_function(path, FLAG)
    if not asyncio.iscoroutinefunction(fn):
        raise UserInputError(f"{FLAG} {path}: expected `async def fn(client, sample, params) -> Sample`")
    return fn


class EngineClient:
    """A custom generate function's handle on the engine: policy turns (batched across samples) and the tokenizer."""

    def __init__(self, run_turns: RunTurns, tokenizer: Any, budget: SamplingParams):
        """`budget`: the run's sampling parameters, whose response budget bounds turns and observations alike."""
        self._run_turns = run_turns
        self.tokenizer = tokenizer
        self.budget = budget
        self._queue: list[tuple[Sample, SamplingParams, asyncio.Future]] = []

    async def generate(self, sample: Sample, params: SamplingParams) -> Sample:
        """One policy turn: continue `sample` until EOS, a stop token of `params`, or the response budget."""
        if params.remaining_tokens(sample) <= 0:
            sample.status = SampleStatus.TRUNCATED  # the response budget is spent
            return sample
        loop = asyncio.get_running_loop()
        if not self._queue:  # runs after every sample that is ready now has queued its turn
            loop.call_soon(self._flush)
        if sample.status in FINISHED_STATUSES:
            sample.status = SampleStatus.PENDING  # a finished turn is continued
        future = loop.create_future()
        self._queue.append((sample, params, future))
        return await future

    def append_observation(self, sample: Sample, text: str) -> None:
        """Text the policy did not produce (a tool's answer): in the context of later turns, never trained on.

        What does not fit in the response budget is cut, and the sample ends TRUNCATED."""
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        room = self.budget.remaining_tokens(sample)
        if len(tokens) >= room:
            tokens = tokens[:room]
            sample.status = SampleStatus.TRUNCATED
        sample.response_tokens = sample.response_tokens + tokens
        sample.rollout_log_probs = sample.rollout_log_probs + [0.0] * len(tokens)
        sample.loss_mask = sample.loss_mask + [0] * len(tokens)
        sample.response = self.tokenizer.decode(sample.response_tokens, skip_special_tokens=True)

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        by_params: dict[SamplingParams, list[tuple[Sample, asyncio.Future]]] = {}
        for sample, params, future in queue:
            by_params.setdefault(params, []).append((sample, future))
        for params, waiting in by_params.items():
            try:
                done = self._run_turns([sample for sample, _ in waiting], params)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting functions, which raise it
                for _, future in waiting:
                    future.set_exception(e)
                continue
            for sample, (_, future) in zip(done, waiting):
                future.set_result(sample)


async def _run_all(fn: GenerateFunction, client: EngineClient, samples: list[Sample],
                   params: SamplingParams) -> list[Sample]:
    results = await asyncio.gather(*(fn(client, sample, params) for sample in samples))
    for given, result in zip(samples, results):
        check_result(result, given)
    return list(results)


def check_result(result: Any, given: Sample) -> None:
    """A custom function's sample must be trainable as returned: one log-prob and one mask entry per token."""
    where = f"{FLAG}: the sample returned for group {given.group_id}"
    if not isinstance(result, Sample):
        raise UserInputError(f"{where} is a {type(result).__name__}, not a Sample")
    n = result.response_length
    if len(result.rollout_log_probs) != n or len(result.loss_mask) != n:
        raise UserInputError(f"{where} has {n} response tokens but {len(result.rollout_log_probs)} rollout log-probs "
                             f"and {len(result.loss_mask)} loss-mask entries")
    if result.group_id != given.group_id:
        raise UserInputError(f"{where} came back with group_id {result.group_id}")


class CustomGenerateMixin:
    """`generate_custom` for an engine with `generate(samples, params, request_id)` and a `tokenizer`."""

    tokenizer: Any

    def generate_custom(self, function_path: str, samples: list[Sample], params: SamplingParams,
                        request_id: int | None = None) -> list[Sample]:
        """Run the user's function over every sample of the chunk; each of its turns is a `generate` call."""
        fn = load_generate_function(function_path)
        client = EngineClient(lambda batch, p: self.generate(batch, p, request_id), self.tokenizer, params)
        return asyncio.run(_run_all(fn, client, samples, params))


def with_stop_tokens(params: SamplingParams, *token_ids: int) -> SamplingParams:
    """The same sampling, also stopping after any of `token_ids` (for a turn that ends at a tool call)."""
    return dataclasses.replace(params, stop_token_ids=tuple(sorted({*params.stop_token_ids, *token_ids})))
