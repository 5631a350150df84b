"""`train.py --rollout-backend sglang --train-backend torch` end to end on one GPU (engine and trainer colocated).

Needs a CUDA GPU, sglang and ray; run with `pytest -m gpu tests/gpu`.
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
    pytest.mark.skipif(not torch.cuda.is_available() or None in (importlib.util.find_spec("sglang"),
                                                                 importlib.util.find_spec("ray")),
                       reason="needs a CUDA GPU, sglang and ray"),
]


# distributed: the trainer broadcasts (gloo: NCCL refuses a trainer and an engine on one GPU)
DISTRIBUTED = ["--update-weight-mode", "distributed", "--update-weight-group-backend", "gloo"]


@pytest.mark.parametrize("precision, mode", [("bf16", "tensor"), ("block", "tensor"), ("channel", "tensor"),
                                             ("bf16", "distributed"), ("block", "distributed")])
def test_train_with_sglang_engines_runs_steps_and_logs_metrics(sglang_models, tmp_path, precision, mode):
    model = sglang_models / "bf16"
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "async_rl.train", "--hf-checkpoint", str(model),
        "--prompt-data", str(model / "data" / "train.jsonl"), "--output-dir", str(out),
        "--rollout-backend", "sglang", "--train-backend", "torch", "--actor-num-gpus-per-node", "1", "--colocate",
        "--num-rollout", "3", "--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--micro-batch-size", "8",
        "--rollout-max-response-len", "32", "--lr", "1e-4", "--use-tis", "--check-invariants",
        "--invariant-logprob-tol", "0.05",  # a bf16 engine against the fp32 trainer (FP8 is not checked)
        "--sglang-mem-fraction-static", "0.3", "--sglang-attention-backend", "triton",
        "--sglang-sampling-backend", "pytorch", "--sglang-disable-cuda-graph",
    ]
    if precision != "bf16":
        cmd += ["--rollout-quantization", "fp8", "--rollout-fp8-granularity", precision]
    if mode == "distributed":
        cmd += DISTRIBUTED
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"\n{precision} {mode}: " + json.dumps(rows, indent=1))
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["rollout/samples"] == 32 and r["train/skipped_steps"] == 0 for r in rows)
    assert all("perf/release_memory_time_s" in r for r in rows)  # colocated: engines free memory while training
    limit = 0.05 if precision == "bf16" else 0.3
    assert all(r["train/rollout_logprob_abs_diff"] < limit for r in rows)
