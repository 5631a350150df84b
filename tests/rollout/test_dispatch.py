"""How groups go to the engines: a call per group for engines that batch concurrent calls, chunks otherwise."""

from collections import Counter

import pytest
import ray

from async_rl.backends.local.engine import LocalEngine
from async_rl.data.prompt_dataset import PromptRow
from async_rl.placement import engine_actor, init_loopback_ray
from async_rl.rollout.batch_assembler import BatchAssembler
from async_rl.rollout.engine import ROW_MAX_NEW_TOKENS, SamplingParams
from async_rl.rollout.engine_pool import EnginePool
from async_rl.sample import Sample
from async_rl.weights.transports import CheckpointWeights
from rewards.grading import RewardGrader
from rewards.registry import resolve_reward


@pytest.fixture(scope="module")
def ray_here():
    init_loopback_ray(num_cpus=2)
    yield
    ray.shutdown()


def assembler_for(tiny_model, per_group: bool) -> BatchAssembler:
    engine = engine_actor(LocalEngine, concurrent_generates=4 if per_group else 0).remote(str(tiny_model), seed=1)
    grader = RewardGrader(resolve_reward("deepscaler"), args=None, num_workers=1)
    return BatchAssembler(EnginePool(lambda rank: engine, 1, CheckpointWeights(), per_group=per_group), grader)


@pytest.mark.parametrize("per_group, calls", [(True, 6), (False, 2)])
def test_groups_go_out_per_group_or_in_two_chunks_and_all_come_back(ray_here, tiny_model, per_group, calls):
    assembler = assembler_for(tiny_model, per_group)
    rows = [PromptRow(f"{i}+1=", [ord(c) for c in f"{i}+1="], str(i + 1), {}) for i in range(6)]
    pending = assembler.submit(rows, 4, SamplingParams(1.0, 1.0, 16))
    assert len(pending.requests) == calls
    chunks = [chunk for chunk, _ in assembler._graded_chunks(pending, Counter())]
    assembler.grader.close()
    assert len(chunks) == calls
    if per_group:
        assert all(len({s.group_id for s in chunk}) == 1 and len(chunk) == 4 for chunk in chunks)
    assert sorted(s.group_id for chunk in chunks for s in chunk) == sorted(g for g in range(6) for _ in range(4))
    assert all(s.response_length > 0 for chunk in chunks for s in chunk)


def test_a_rows_own_budget_caps_its_responses():
    params = SamplingParams(1.0, 1.0, max_new_tokens=64)
    own = Sample(prompt="p", prompt_tokens=[1], metadata={ROW_MAX_NEW_TOKENS: 5})
    assert params.remaining_tokens(own) == 5
    assert params.remaining_tokens(Sample(prompt="p", prompt_tokens=[1])) == 64
    assert params.remaining_tokens(Sample(prompt="p", prompt_tokens=[1], metadata={ROW_MAX_NEW_TOKENS: 500})) == 64
