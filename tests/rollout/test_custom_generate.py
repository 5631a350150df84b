"""--custom-generate-function-path: multi-turn rollouts with a tool, batched turns, masks the trainer respects."""

import json
import subprocess
import sys

import pytest
import torch

from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from async_rl.errors import UserInputError
from async_rl.rollout.custom_generate import EngineClient, check_result, load_generate_function
from async_rl.rollout.engine import SamplingParams
from async_rl.rollout.examples.calculator_tool import calculate
from async_rl.sample import Sample, SampleStatus
from tests.conftest import REPO, run_flags

CALCULATOR = "async_rl.rollout.examples.calculator_tool:generate"
PROBLEMS = ["12+34=", "70+18=", "99+99=", "45+61="]


def samples_for(tokenizer, texts, n=3):
    return [Sample(prompt=t, prompt_tokens=tokenizer(t, add_special_tokens=False)["input_ids"], label=str(eval(t[:-1])),
                   group_id=i) for i, t in enumerate(texts) for _ in range(n)]


@pytest.fixture(scope="module")
def calculator_rollout(tiny_model, tokenizer):
    """The calculator plugin on the local engine; every engine call is recorded (batch size, stop tokens)."""
    engine = LocalEngine(str(tiny_model), seed=0)
    calls = []
    generate = engine.generate

    def recording_generate(samples, params, request_id=None):
        calls.append((len(samples), params.stop_token_ids))
        return generate(samples, params, request_id)

    engine.generate = recording_generate
    params = SamplingParams(temperature=1.0, max_new_tokens=64)
    samples = engine.generate_custom(CALCULATOR, samples_for(tokenizer, PROBLEMS), params, request_id=7)
    return samples, calls, params


def test_the_tool_answer_sits_between_two_policy_turns_and_is_masked(calculator_rollout, tokenizer):
    samples, _, _ = calculator_rollout
    with_tool = [s for s in samples if "[calculator:" in s.response]
    assert len(with_tool) >= len(samples) // 2  # the SFT'd policy closes its reasoning almost always
    for s in samples:
        assert len(s.rollout_log_probs) == len(s.loss_mask) == s.response_length
        assert s.status in (SampleStatus.COMPLETED, SampleStatus.TRUNCATED)
    for s in with_tool:
        observation = tokenizer.encode(f"[calculator: {s.prompt[:-1]} = {s.label}]", add_special_tokens=False)
        think_end = s.response_tokens.index(tokenizer.convert_tokens_to_ids("</think>"))
        start = think_end + 1
        assert s.response_tokens[start:start + len(observation)] == observation
        assert s.loss_mask == [1] * start + [0] * len(observation) + [1] * (s.response_length - start - len(observation))
        assert all(lp == 0.0 for lp in s.rollout_log_probs[start:start + len(observation)])
        assert all(lp < 0.0 for lp, m in zip(s.rollout_log_probs, s.loss_mask) if m) and s.response_length > start + len(observation)


def test_turns_of_all_samples_go_to_the_engine_as_one_batch(calculator_rollout):
    samples, calls, params = calculator_rollout
    turns_with_tool = sum("[calculator:" in s.response for s in samples)
    first, *rest = calls
    assert first[0] == len(samples) and first[1]  # turn 1: everyone at once, stopping at </think>
    assert rest == ([(turns_with_tool, ())] if turns_with_tool else [])  # turn 2: every sample that got the tool


def test_policy_tokens_carry_log_probs_of_the_context_with_the_observation(calculator_rollout, tiny_model):
    """The trainer's recomputation over prompt + turns + observation agrees with what the engine sampled from."""
    samples, _, _ = calculator_rollout
    trainer = TorchTrainer(str(tiny_model), TrainConfig(micro_batch_size=6), global_batch_size=len(samples), temperature=1.0)
    for s, recomputed in zip(samples, trainer.compute_log_probs(samples)):
        mask = torch.tensor(s.loss_mask, dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(recomputed)[mask], torch.tensor(s.rollout_log_probs)[mask], atol=2e-4, rtol=0)


def test_a_spent_budget_ends_the_sample_without_another_engine_call(tiny_model, tokenizer):
    import asyncio

    sample = samples_for(tokenizer, PROBLEMS[:1], n=1)[0]
    sample.response_tokens, sample.rollout_log_probs, sample.loss_mask = [5, 6], [-1.0, -1.0], [1, 1]
    client = EngineClient(lambda batch, params: pytest.fail("the engine was called"), tokenizer,
                          SamplingParams(max_new_tokens=2))
    done = asyncio.run(client.generate(sample, SamplingParams(max_new_tokens=2)))
    assert done.status == SampleStatus.TRUNCATED


def test_an_observation_is_cut_to_the_response_budget(tokenizer):
    sample = samples_for(tokenizer, PROBLEMS[:1], n=1)[0]
    sample.response_tokens, sample.rollout_log_probs, sample.loss_mask = [5, 6], [-1.0, -1.0], [1, 1]
    client = EngineClient(lambda batch, params: pytest.fail("the engine was called"), tokenizer,
                          SamplingParams(max_new_tokens=6))
    client.append_observation(sample, "<tool_response>12345</tool_response>")
    assert sample.response_length == 6 and sample.loss_mask == [1, 1, 0, 0, 0, 0]
    assert sample.status == SampleStatus.TRUNCATED


def test_a_returned_sample_must_be_trainable(tokenizer):
    given = samples_for(tokenizer, PROBLEMS[:1], n=1)[0]
    bad = Sample(prompt="x", prompt_tokens=[1], response_tokens=[1, 2], rollout_log_probs=[-0.1], loss_mask=[1, 1])
    with pytest.raises(UserInputError, match="2 response tokens but 1 rollout log-probs"):
        check_result(bad, given)
    with pytest.raises(UserInputError, match="is a dict, not a Sample"):
        check_result({}, given)


def test_the_calculator_refuses_what_is_not_small_integer_arithmetic():
    assert calculate("12+34") == "46" and calculate("7-3*4") == "-5"
    assert calculate("2**100000").startswith("error") and calculate("__import__('os')").startswith("error")
    assert calculate("9" * 100_000).startswith("error") and calculate("(" * 5000 + "1" + ")" * 5000).startswith("error")
    assert calculate("999999999*999999999*999999999").startswith("error")


@pytest.mark.parametrize("path, message", [
    ("async_rl.rollout.examples.calculator_tool:missing", "has no attribute 'missing'"),
    ("async_rl.rollout.examples.calculator_tool:calculate", "expected `async def fn"),
    ("no_such_module:fn", "cannot import module 'no_such_module'"),
])
def test_a_bad_plugin_path_names_the_flag(path, message):
    with pytest.raises(UserInputError, match=f"--custom-generate-function-path.*{message}"):
        load_generate_function(path)


def test_a_run_trains_on_calculator_rollouts_through_the_flag(tiny_model, tmp_path):
    """Two steps of the embedded run with the plugin, via Ray engine actors; the saved batches show the masks."""
    out, debug = tmp_path / "run", tmp_path / "debug"
    flags = run_flags(tiny_model, out, "--num-rollout", "2", "--custom-generate-function-path", CALCULATOR,
                      "--save-debug-rollout-data", str(debug), evaluate=False)
    subprocess.run([sys.executable, "-m", "async_rl.train", *flags], cwd=REPO, check=True, capture_output=True, timeout=600)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [0, 1]
    saved = [json.loads(line) for line in (debug / "rollout_000000.jsonl").read_text().splitlines()]
    with_tool = [s for s in saved if "[calculator:" in s["response"]]
    assert with_tool and all(0 in s["loss_mask"] and 1 in s["loss_mask"] for s in with_tool)


def test_partial_rollouts_cannot_continue_a_custom_rollout(tiny_model, tmp_path):
    flags = run_flags(tiny_model, tmp_path, "--async", "--partial-rollout", "--custom-generate-function-path", CALCULATOR)
    result = subprocess.run([sys.executable, "-m", "async_rl.train", *flags, "--dry-run"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "--partial-rollout cannot continue" in result.stderr
