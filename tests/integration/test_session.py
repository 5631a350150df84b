"""The weight push through Ray reaches the engines: their version and their outputs change."""

import pytest
import ray

from async_rl.config import parse_config
from async_rl.sample import Sample
from async_rl.session import TrainingSession
from tests.conftest import run_flags


def mean_mismatch(samples, trainer_log_probs):
    diffs = [abs(a - b) for s, lp in zip(samples, trainer_log_probs) for a, b in zip(lp, s.rollout_log_probs)]
    return sum(diffs) / len(diffs)


@pytest.mark.parametrize("quantization, tolerance", [("none", 2e-4), ("fp8", 0.05)])
def test_pushed_weights_reach_every_engine(tiny_model, tmp_path, quantization, tolerance):
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--rollout-num-engines", "2", "--lr", "3e-3",
                                    "--rollout-quantization", quantization, "--update-weight-buffer-size", "65536",
                                    evaluate=False))
    with TrainingSession(cfg) as session:
        samples, _ = session.produce_rollout(0)
        assert {s.weight_version for s in samples} == {0}
        engines = session.engine_pool.engines
        probe = [Sample(prompt=s.prompt, prompt_tokens=s.prompt_tokens, group_id=s.group_id) for s in samples[:8]]
        before = ray.get(engines[0].generate.remote(probe, session.rollout_params))
        assert session.train(0, samples)["train/grad_norm"] > 0
        ray.get(session.push_weights(version=1))
        assert [ray.get(e.health.remote())["weight_version"] for e in engines] == [1, 1]
        after = ray.get(engines[1].generate.remote(probe, session.rollout_params))
        assert all(s.weight_version == 1 for s in after)
        # the engines now sample from the trained policy: the trainer's new weights score their tokens
        # as they did (up to FP8 rounding), unlike the tokens sampled before the push
        stale = mean_mismatch(before, ray.get(session.trainer.compute_log_probs.remote(before)))
        fresh = mean_mismatch(after, ray.get(session.trainer.compute_log_probs.remote(after)))
        assert fresh < tolerance and fresh < stale / 2, (fresh, stale)
