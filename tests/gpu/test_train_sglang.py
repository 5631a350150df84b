"""`train.py --rollout-backend sglang` end to end on one GPU (engine and trainer colocated), with the torch and
the megatron trainer.

Needs a CUDA GPU, sglang and ray (and megatron-core for the megatron cases); run with `pytest -m gpu tests/gpu`.
"""

import importlib.util
import json
import sys

import pytest
import torch

from tests.gpu.conftest import run_to_completion

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or None in (importlib.util.find_spec("sglang"),
                                                                 importlib.util.find_spec("ray")),
                       reason="needs a CUDA GPU, sglang and ray"),
]


# distributed: the trainer broadcasts (gloo: NCCL refuses a trainer and an engine on one GPU)
DISTRIBUTED = ["--update-weight-mode", "distributed", "--update-weight-group-backend", "gloo"]


# megatron: BF16 training (FP32 main weights) sharing the GPU with the engine; megatron-fp8: FP8 GEMMs on top
MEGATRON = ["--train-backend", "megatron", "--bf16"]
FP8_TRAINING = ["--fp8-format", "e4m3", "--fp8-recipe", "tensorwise"]


def colocated_run(model, out) -> list[str]:
    """Three small sync steps, engine and trainer sharing the GPU."""
    return [
        sys.executable, "-m", "async_rl.train", "--hf-checkpoint", str(model),
        "--prompt-data", str(model / "data" / "train.jsonl"), "--output-dir", str(out),
        "--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1", "--colocate",
        "--num-rollout", "3", "--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--micro-batch-size", "8",
        "--rollout-max-response-len", "32", "--lr", "1e-4", "--use-tis", "--check-invariants",
        "--invariant-logprob-tol", "0.05",  # a bf16 engine against the trainer (FP8 is not checked)
        "--sglang-mem-fraction-static", "0.3", "--sglang-attention-backend", "triton",
        "--sglang-sampling-backend", "pytorch", "--sglang-disable-cuda-graph",
    ]


@pytest.mark.parametrize("backend, precision, mode", [
    ("torch", "bf16", "tensor"), ("torch", "block", "tensor"), ("torch", "channel", "tensor"),
    ("torch", "bf16", "distributed"), ("torch", "block", "distributed"),
    ("megatron", "bf16", "tensor"), ("megatron", "block", "tensor"), ("megatron", "bf16", "distributed"),
    ("megatron-fp8", "block", "tensor"), ("megatron-offload", "block", "tensor"),
])
def test_train_with_sglang_engines_runs_steps_and_logs_metrics(sglang_models, tmp_path, backend, precision, mode):
    if backend.startswith("megatron"):
        pytest.importorskip("megatron.core", reason="the megatron cases need megatron-core")
    if backend in ("megatron-fp8", "megatron-offload"):
        pytest.importorskip("transformer_engine", reason="FP8 training needs Transformer Engine")
    out = tmp_path / "run"
    cmd = colocated_run(sglang_models / "bf16", out)
    if precision != "bf16":
        cmd += ["--rollout-quantization", "fp8", "--rollout-fp8-granularity", precision]
    if mode == "distributed":
        cmd += DISTRIBUTED
    cmd += {"megatron": MEGATRON, "megatron-fp8": MEGATRON + FP8_TRAINING,
            "megatron-offload": MEGATRON + FP8_TRAINING + ["--offload-train"]}.get(backend, ["--train-backend", "torch"])
    run_to_completion(cmd, timeout=500)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"\n{backend} {precision} {mode}: " + json.dumps(rows, indent=1))
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["rollout/samples"] == 32 and r["train/skipped_steps"] == 0 for r in rows)
    assert all("perf/release_memory_time_s" in r for r in rows)  # colocated: engines free memory while training
    limit = 0.05 if precision == "bf16" else 0.3
    assert all(r["train/rollout_logprob_abs_diff"] < limit for r in rows)
    if backend == "megatron-offload":  # the trainer's state left the GPU around every generation and came back
        assert all(r["memory/train_onload_gib"] > 0 and r["perf/train_onload_time_s"] > 0 for r in rows)


def test_a_calculator_rollout_on_sglang_masks_the_tool_and_keeps_log_probs_in_context(sglang_models, tmp_path):
    """--custom-generate-function-path through SGLang: two turns around a masked observation; the trainer's
    log-probs of the policy's tokens (recomputed over the context with the observation) match SGLang's."""
    out, debug = tmp_path / "run", tmp_path / "debug"
    cmd = colocated_run(sglang_models / "bf16", out) + [
        "--rollout-max-response-len", "64", "--train-backend", "torch", "--save-debug-rollout-data", str(debug),
        "--custom-generate-function-path", "async_rl.rollout.examples.calculator_tool:generate"]
    run_to_completion(cmd, timeout=500)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/rollout_logprob_abs_diff"] < 0.05 for r in rows)
    saved = [json.loads(line) for line in (debug / "rollout_000000.jsonl").read_text().splitlines()]
    with_tool = [s for s in saved if "[calculator:" in s["response"]]
    print(f"\n{len(with_tool)} of {len(saved)} samples called the calculator; mismatch per step: "
          f"{[round(r['train/rollout_logprob_abs_diff'], 4) for r in rows]}")
    assert with_tool and all(0 in s["loss_mask"] and s["loss_mask"][-1] == 1 for s in with_tool)
