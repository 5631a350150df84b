"""The weight push through Ray reaches the engines: their version and their outputs change."""

from async_rl.config import parse_config
from async_rl.session import TrainingSession
from tests.conftest import run_flags

import ray


def test_pushed_weights_reach_every_engine(tiny_model, tmp_path):
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--rollout-num-engines", "2", "--lr", "1e-3"))
    with TrainingSession(cfg) as session:
        samples, _ = session.produce_rollout()
        assert {s.weight_version for s in samples} == {0}
        engines = session.rollout.engines
        probe = samples[:4]
        before = ray.get(engines[0].generate.remote(probe, session.rollout_params))
        assert session.train(0, samples)["train/grad_norm"] > 0
        ray.get(session.push_weights(version=1))
        assert [ray.get(e.health.remote())["weight_version"] for e in engines] == [1, 1]
        after = ray.get(engines[1].generate.remote(probe, session.rollout_params))
        assert all(s.weight_version == 1 for s in after)
        recomputed_before = ray.get(session.trainer.compute_log_probs.remote(before))
        # the engine now samples from the trained policy: its log-probs match the trainer's new weights
        for s, lp in zip(after, ray.get(session.trainer.compute_log_probs.remote(after))):
            assert max(abs(a - b) for a, b in zip(lp, s.rollout_log_probs)) < 2e-4
        assert any(max(abs(a - b) for a, b in zip(lp, s.rollout_log_probs)) > 1e-3
                   for s, lp in zip(before, recomputed_before))
