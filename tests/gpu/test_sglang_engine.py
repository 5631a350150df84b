"""The sglang rollout backend against real SGLang on a GPU: log-probs, weight pushes in BF16 and FP8.

Each engine (an SGLang HTTP server and its client) is driven from a process of its own
(`tests/gpu/sglang_probe.py`), so one engine's CUDA state cannot leak into the next; run with
`pytest -m gpu tests/gpu`.
"""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("sglang") is None,
                       reason="needs a CUDA GPU and sglang"),
]


def run_probe(sglang_models, tmp_path, fp8: str | None) -> dict:
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "tests.gpu.sglang_probe", "--model", str(sglang_models / "bf16"), "--out", str(out)]
    if fp8:
        cmd += ["--fp8-model", str(sglang_models / f"fp8-{fp8}"), "--fp8-granularity", fp8]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=400)
    report = json.loads(out.read_text())
    print(json.dumps(report, indent=2))
    return report


def test_bf16_engine_log_probs_match_the_trainer_and_a_push_switches_the_weights(sglang_models, tmp_path):
    r = run_probe(sglang_models, tmp_path, fp8=None)
    assert r["bf16/tokens"] > 0
    assert r["bf16/logprob_mean_abs_diff_vs_trainer"] < 0.05  # bf16 engine vs fp32 trainer, same weights
    assert r["bf16/greedy_agreement_new_weights_after_push"] > 0.9
    assert r["bf16/greedy_agreement_new_weights_after_push"] > r["bf16/greedy_agreement_new_weights_before_push"]
    assert r["bf16/logprob_mean_abs_diff_vs_trainer_after_push"] < 0.05
    assert r["bf16/weight_version_after_push"] == 1
    assert r["bf16/gib_freed_by_release"] > 1  # weights and KV cache (mem_fraction_static 0.3 of the GPU)
    assert r["bf16/greedy_agreement_after_release_resume_push"] > 0.9


@pytest.mark.parametrize("granularity", ["block", "channel"])
def test_fp8_engine_takes_fp8_pairs_and_refuses_bf16(sglang_models, tmp_path, granularity):
    r = run_probe(sglang_models, tmp_path, fp8=granularity)
    key = f"fp8-{granularity}"
    assert r[f"{key}/greedy_agreement_new_weights_after_push"] > 0.8
    assert r[f"{key}/greedy_agreement_new_weights_after_push"] > r[f"{key}/greedy_agreement_new_weights_before_push"]
    assert r[f"{key}/logprob_mean_abs_diff_vs_trainer_after_push"] < 0.3  # larger than bf16: reported, not hidden
    assert r[f"{key}/gib_freed_by_release"] > 1
    assert r[f"{key}/greedy_agreement_after_release_resume_push"] > 0.8
    assert "was sent torch.float32" in r[f"{key}/bf16_push_refused"]
    # the engine's own account of its FP8 layers matches the push, and would name a layer the push left out
    assert r[f"{key}/fp8_modules_served"] > 0 and r[f"{key}/fp8_layer_difference"] is None
    assert r[f"{key}/fp8_layer_difference_one_weight_unpushed"].endswith(
        "1 served in FP8 but not pushed in FP8 (e.g. model.layers.0.mlp.down_proj)")
    # a push leaves the engine exactly as a fresh start from the same weights would (no stale re-layout)
    assert r[f"{key}/greedy_tokens_equal_fresh_engine_from_fp8_checkpoint"], r[f"{key}/greedy_first_difference"]
