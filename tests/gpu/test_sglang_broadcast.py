"""`--update-weight-mode distributed` against real SGLang: buckets broadcast over a weight-update group.

The trainer side (`WeightBroadcaster`) runs in this process on the GPU; the engine is a Ray actor with its
SGLang server on the same GPU. NCCL refuses two ranks on one GPU, so the group runs over gloo here; the
HTTP calls, the flattened-bucket layout and the pause/continue around the push are the same as over NCCL.
Run with `pytest -m gpu tests/gpu`.
"""

import importlib.util
import json

import pytest
import torch
from transformers import AutoTokenizer

from async_rl.net import LOOPBACK
from async_rl.placement import init_loopback_ray
from async_rl.rollout.engine import SamplingParams
from async_rl.sample import SampleStatus
from async_rl.weights.transports.nccl_broadcast import WeightBroadcaster
from tests.gpu.conftest import SGLANG_SERVER
from tests.gpu.sglang_probe import fresh, greedy_agreement, mismatch, perturbed_trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or None in (importlib.util.find_spec("sglang"),
                                                                 importlib.util.find_spec("ray")),
                       reason="needs a CUDA GPU, sglang and ray"),
]


@pytest.fixture
def ray_on_one_gpu():
    import ray

    init_loopback_ray(num_cpus=4, num_gpus=1)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("fp8", [None, "block"])
def test_a_broadcast_push_switches_the_weights_and_keeps_requests_in_flight(sglang_models, ray_on_one_gpu, fp8):
    from async_rl.backends.sglang.engine import SGLangEngine
    from async_rl.weights.sync import weight_buckets

    ray = ray_on_one_gpu

    model = sglang_models / (f"fp8-{fp8}" if fp8 else "bf16")
    actor = ray.remote(num_gpus=1, max_concurrency=1, concurrency_groups={"control": 1})(SGLangEngine)
    engine = actor.remote(str(model), seed=0, fp8=fp8, **SGLANG_SERVER)
    tokenizer = AutoTokenizer.from_pretrained(model)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
    new = perturbed_trainer(str(sglang_models / "bf16"), seed=1)  # the "trained" weights, on this GPU
    report = {}

    broadcaster = WeightBroadcaster()
    broadcaster.connect([engine], ranks_per_engine=1, backend="gloo", host=LOOPBACK)
    before = ray.get(engine.generate.remote(fresh(tokenizer), greedy))
    report["greedy_agreement_new_weights_before_push"] = greedy_agreement(before, new)

    # requests sent while the engine is paused wait in SGLang; the push lands while they are in flight
    ray.get(engine.pause_generation.options(concurrency_group="control").remote())
    in_flight = engine.generate.remote(fresh(tokenizer), greedy)
    ready, _ = ray.wait([in_flight], timeout=3)
    report["paused_requests_finished_early"] = bool(ready)
    buckets = weight_buckets(new.export_weights(), bucket_bytes=1 << 20, fp8=fp8)
    broadcaster.push(buckets, version=1)  # pauses, broadcasts, sets the version, continues
    after = ray.get(in_flight)
    report["in_flight_statuses"] = sorted({s.status.value for s in after})
    report["in_flight_weight_versions"] = sorted({s.weight_version for s in after})
    report["greedy_agreement_new_weights_after_push"] = greedy_agreement(after, new)
    report["engine_weight_version"] = ray.get(engine.health.remote())["weight_version"]
    sampled = ray.get(engine.generate.remote(fresh(tokenizer), SamplingParams(temperature=1.0, max_new_tokens=24)))
    report["logprob_mean_abs_diff_vs_trainer_after_push"] = mismatch(sampled, new)
    report["fresh_weight_versions"] = sorted({s.weight_version for s in sampled})

    # the group is rebuilt (as after an engine restart) and a second push still arrives
    broadcaster.connect([engine], ranks_per_engine=1, backend="gloo", host=LOOPBACK)
    broadcaster.push(weight_buckets(new.export_weights(), bucket_bytes=1 << 20, fp8=fp8), version=2)
    report["engine_weight_version_after_rebuilt_group"] = ray.get(engine.health.remote())["weight_version"]
    broadcaster.disconnect()
    ray.get(engine.shutdown.remote())
    print(json.dumps(report, indent=2))

    assert not report["paused_requests_finished_early"]
    assert set(report["in_flight_statuses"]) <= {SampleStatus.COMPLETED.value, SampleStatus.TRUNCATED.value}
    assert len(after) == 16 and all(s.response_length > 0 for s in after)
    assert report["in_flight_weight_versions"] == [0]  # started before the push: labelled with the older version
    assert report["greedy_agreement_new_weights_after_push"] > (0.9 if fp8 is None else 0.8)
    assert report["greedy_agreement_new_weights_after_push"] > report["greedy_agreement_new_weights_before_push"]
    assert report["engine_weight_version"] == 1 and report["fresh_weight_versions"] == [1]
    assert report["logprob_mean_abs_diff_vs_trainer_after_push"] < (0.05 if fp8 is None else 0.3)
    assert report["engine_weight_version_after_rebuilt_group"] == 2
