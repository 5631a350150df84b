"""An SGLang server that dies takes its engine actor down; the engine pool replaces the engine, weights included.

One GPU, trainer and engine colocated, through Ray; run with `pytest -m gpu tests/gpu`.
"""

import importlib.util
import os
import signal

import pytest
import ray
import torch

from async_rl.config import parse_config
from async_rl.session import TrainingSession
from tests.conftest import run_flags
from tests.integration.test_engine_restart import check_replaced_with_current_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("sglang") is None,
                       reason="needs a CUDA GPU and sglang"),
]


@pytest.mark.parametrize("mode", ["tensor", "distributed"])
def test_a_dead_server_is_replaced_and_the_batch_is_still_full(sglang_models, tmp_path, mode):
    """distributed: the replacement loads through the object store, then joins a rebuilt broadcast group."""
    flags = run_flags(sglang_models / "bf16", tmp_path / "run", evaluate=False) + [
        "--update-weight-mode", mode, *(["--update-weight-group-backend", "gloo"] if mode == "distributed" else []),
        "--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1", "--colocate",
        "--sglang-mem-fraction-static", "0.3", "--sglang-attention-backend", "triton",
        "--sglang-sampling-backend", "pytorch", "--sglang-disable-cuda-graph",
        "--invariant-logprob-tol", "0.05",  # a bf16 engine against the fp32 trainer
    ]
    cfg, _ = parse_config(flags)
    with TrainingSession(cfg) as session:
        samples, _ = session.produce_rollout(0)
        session.train(0, samples)
        session.engine_pool.wait_weights(session.push_weights(version=1))
        victim = session.engine_pool.engines[0]
        health = ray.get(victim.health.remote())
        assert health["weight_version"] == 1
        os.killpg(health["server_pid"], signal.SIGKILL)  # the fault: the SGLang server and its schedulers die

        check_replaced_with_current_weights(session, 0, victim)
        session.engine_pool.wait_weights(session.push_weights(version=2))  # the rebuilt group (or the new engine) takes it
        assert ray.get(session.engine_pool.engines[0].health.remote())["weight_version"] == 2
