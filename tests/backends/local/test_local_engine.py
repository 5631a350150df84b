import pytest
import torch

from async_rl.backends.local.engine import LocalEngine
from async_rl.backends.torch.trainer import TorchTrainer
from async_rl.config.sections import TrainConfig
from async_rl.rollout.engine import SamplingParams
from async_rl.sample import Sample, SampleStatus


def prompts(tokenizer, texts):
    return [Sample(prompt=t, prompt_tokens=tokenizer(t, add_special_tokens=False)["input_ids"], label="0", group_id=i)
            for i, t in enumerate(texts)]


# Different lengths, so the engine's left padding and position ids are exercised.
TEXTS = ["12+34=", "70+18=", "99+99=", "<|im_start|>user\n3+4=<|im_end|>\n"]


def test_engine_log_probs_match_a_trainer_forward_pass_in_fp32(tiny_model, tokenizer):
    engine = LocalEngine(str(tiny_model), seed=0)
    samples = engine.generate(prompts(tokenizer, TEXTS * 4), SamplingParams(temperature=0.8, max_new_tokens=24))
    trainer = TorchTrainer(str(tiny_model), TrainConfig(micro_batch_size=5), global_batch_size=len(samples), temperature=0.8)
    recomputed = trainer.compute_log_probs(samples)
    for s, lp in zip(samples, recomputed):
        assert len(lp) == s.response_length > 0
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(s.rollout_log_probs), atol=2e-4, rtol=0)


def test_responses_stop_at_eos_or_length(tiny_model, tokenizer):
    engine = LocalEngine(str(tiny_model), seed=0)
    arithmetic = prompts(tokenizer, TEXTS[:3])
    long = engine.generate(arithmetic, SamplingParams(temperature=0.01, max_new_tokens=48))
    eos = tokenizer.eos_token_id
    for s in long:
        assert s.status == SampleStatus.COMPLETED and s.response_tokens[-1] == eos
        assert eos not in s.response_tokens[:-1]
        assert len(s.rollout_log_probs) == len(s.loss_mask) == s.response_length
        assert s.response.startswith("<think>") and "</think>\\boxed{" in s.response
    short = engine.generate(prompts(tokenizer, TEXTS), SamplingParams(max_new_tokens=3))
    assert all(s.status == SampleStatus.TRUNCATED and s.response_length == 3 for s in short)
    # --rollout-max-context-len: prompt + response stop at the context length, below the response budget
    context = max(len(s.prompt_tokens) for s in arithmetic) + 2
    capped = engine.generate(prompts(tokenizer, TEXTS[:3]), SamplingParams(temperature=0.01, max_new_tokens=48,
                                                                           max_context_len=context))
    assert all(len(s.prompt_tokens) + s.response_length == context and s.status == SampleStatus.TRUNCATED for s in capped)


def test_weight_update_changes_version_and_outputs(tiny_model, tokenizer):
    engine = LocalEngine(str(tiny_model), seed=0)
    params = SamplingParams(temperature=0.01, max_new_tokens=16)
    before = [s.response_tokens for s in engine.generate(prompts(tokenizer, TEXTS), params)]
    perturbed = [(n, p.detach() + 0.5 * torch.randn_like(p)) for n, p in engine.model.named_parameters()]
    engine.update_weights(perturbed, version=7)
    after = engine.generate(prompts(tokenizer, TEXTS), params)
    assert engine.health()["weight_version"] == 7
    assert all(s.weight_version == 7 for s in after)
    assert [s.response_tokens for s in after] != before


def test_weight_update_with_an_unknown_name_fails_loudly(tiny_model):
    engine = LocalEngine(str(tiny_model))
    try:
        engine.update_weights([("model.no_such.weight", torch.zeros(1))], version=1)
    except KeyError as e:
        assert "model.no_such.weight" in str(e)
    else:
        raise AssertionError("unknown parameter name was accepted")


@pytest.mark.parametrize("granularity,scale", [("block", "weight_scale_inv"), ("channel", "weight_scale")])
def test_fp8_engine_loads_fp8_buckets_as_bytes_and_matches_local_quantization(tiny_model, tokenizer, granularity, scale):
    from async_rl.weights.sync import weight_buckets

    trainer = TorchTrainer(str(tiny_model), TrainConfig(), global_batch_size=4, temperature=1.0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    from_bytes = LocalEngine(str(tiny_model), fp8=granularity)
    requantized = LocalEngine(str(tiny_model), fp8=granularity)
    for bucket in weight_buckets(trainer.export_weights(), bucket_bytes=1 << 16, fp8=granularity):
        from_bytes.load_weights(bucket)
    requantized.load_weights(list(trainer.export_weights()))  # high-precision weights: the engine quantizes
    a = dict(from_bytes.model.named_buffers()) | dict(from_bytes.model.named_parameters())
    b = dict(requantized.model.named_buffers()) | dict(requantized.model.named_parameters())
    assert a.keys() == b.keys() and f"model.layers.0.mlp.up_proj.{scale}" in a
    assert a["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.mark.parametrize("granularity", ["block", "channel"])
def test_fp8_engine_log_probs_differ_from_full_precision_by_a_little(tiny_model, tokenizer, granularity):
    engine = LocalEngine(str(tiny_model), seed=0, fp8=granularity)
    samples = engine.generate(prompts(tokenizer, TEXTS[:3] * 4), SamplingParams(max_new_tokens=24))
    trainer = TorchTrainer(str(tiny_model), TrainConfig(micro_batch_size=4), global_batch_size=12, temperature=1.0)
    diffs = torch.cat([torch.tensor(lp) - torch.tensor(s.rollout_log_probs)
                       for s, lp in zip(samples, trainer.compute_log_probs(samples))]).abs()
    assert 1e-4 < diffs.mean() < 0.1


def test_an_aborted_request_returns_at_once_and_its_samples_continue_later(tiny_model, tokenizer):
    engine = LocalEngine(str(tiny_model), seed=0)
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    engine.abort([7])  # arrives while the request is still queued
    untouched = engine.generate(prompts(tokenizer, TEXTS), params, request_id=7)
    assert all(s.status == SampleStatus.ABORTED and s.response_length == 0 for s in untouched)

    partial = engine.generate(prompts(tokenizer, TEXTS * 2), SamplingParams(temperature=1.0, max_new_tokens=3))
    for s in partial:
        s.status = SampleStatus.ABORTED  # as if a weight push had stopped them after three tokens
    partial[0].status = SampleStatus.COMPLETED  # a finished sample in the same chunk is left alone
    kept = [list(s.response_tokens) for s in partial]
    done = engine.generate(partial, params, request_id=8)
    assert done[0].response_tokens == kept[0] and done[0].status == SampleStatus.COMPLETED
    trainer = TorchTrainer(str(tiny_model), TrainConfig(micro_batch_size=8), global_batch_size=8, temperature=1.0)
    recomputed = trainer.compute_log_probs(done)
    for s, first, lp in zip(done[1:], kept[1:], recomputed[1:]):
        assert s.response_tokens[:3] == first and s.status in (SampleStatus.COMPLETED, SampleStatus.TRUNCATED)
        assert len(s.rollout_log_probs) == len(s.loss_mask) == s.response_length <= 24
        # the continuation attends to the kept tokens at the right positions: the trainer agrees token by token
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(s.rollout_log_probs), atol=2e-4, rtol=0)
