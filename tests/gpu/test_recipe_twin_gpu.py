"""The Qwen3-30B-A3B FP8 end-to-end recipe on one GPU: `configs/qwen3_30b_a3b_fp8_e2e.yaml` as released (Transformer
Engine tensorwise FP8 training, grouped-GEMM experts, distributed optimizer, full recomputation, blockwise FP8
rollouts, TIS, DAPO filter), with its cluster cut to one colocated GPU and its model cut to a two-layer twin of the
real config (random weights; every other dimension, 128 experts of which 8 active, as released).

A random model cannot do arithmetic, so the group reward prefers the shortest response of a group
(`tests/plugins/reward_plugins.py:group_best_of`): it gives the DAPO filter groups with reward variance to keep.
Needs a CUDA GPU, sglang, ray, megatron-core and Transformer Engine; run with `pytest -m gpu tests/gpu`.
"""

import importlib.util
import json
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.gpu.conftest import run_to_completion

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or None in (
        importlib.util.find_spec(m) for m in ("sglang", "ray", "megatron", "transformer_engine")),
        reason="needs a CUDA GPU, sglang, ray, megatron-core and Transformer Engine"),
]


@pytest.fixture(scope="module")
def twin(tmp_path_factory, sglang_models):
    """Qwen3-30B-A3B's config with two layers (1.8B parameters), BF16, with the arithmetic model's tokenizer."""
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    out = tmp_path_factory.mktemp("qwen3_30b_a3b_twin")
    config = json.loads((REPO / "benchmarks/model_configs/qwen3-30b-a3b.json").read_text()) | {"num_hidden_layers": 2}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**config)).to(torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(sglang_models / "bf16").save_pretrained(out)
    return out


def test_the_30b_fp8_recipe_runs_on_a_two_layer_twin(twin, sglang_models, tmp_path):
    data = sglang_models / "bf16" / "data"
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    recipe = yaml.safe_load((REPO / "configs/qwen3_30b_a3b_fp8_e2e.yaml").read_text())
    del recipe["rollout_num_gpus"]  # colocated: the engine takes the trainer's GPU
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    # 16 eval prompts: the first eval over all 200 had not finished after 80 s on a fresh machine (no CUDA graphs)
    eval_data = tmp_path / "eval.jsonl"
    eval_data.write_text("".join((data / "eval.jsonl").read_text().splitlines(keepends=True)[:16]))
    cmd = [
        sys.executable, "-m", "async_rl.train", "--config", str(tmp_path / "recipe.yaml"),
        "--actor-num-nodes", "1", "--actor-num-gpus-per-node", "1", "--num-gpus-per-node", "1",
        "--rollout-num-gpus-per-engine", "1", "--expert-model-parallel-size", "1", "--colocate",
        "--hf-checkpoint", str(twin), "--prompt-data", str(data / "train.jsonl"), "--no-apply-chat-template",
        "--num-rollout", "2", "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
        "--over-sampling-batch-size", "8", "--global-batch-size", "16", "--rollout-max-response-len", "32",
        "--max-tokens-per-gpu", "4096",
        "--custom-rm-path", "tests.plugins.reward_plugins:group_best_of", "--group-rm",
        "--eval-prompt-data", "arithmetic", str(eval_data), "--eval-interval", "2",
        "--n-samples-per-eval-prompt", "2", "--eval-max-response-len", "32",
        "--save", str(ckpt), "--save-interval", "2", "--output-dir", str(out), "--check-invariants",
        "--sglang-mem-fraction-static", "0.3", "--sglang-attention-backend", "triton",
        "--sglang-sampling-backend", "pytorch", "--sglang-disable-cuda-graph",
    ]
    run_to_completion(cmd, timeout=600)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_time_s" in r]
    print("\n30B recipe, two-layer twin: " + json.dumps(steps, indent=1))
    assert [r["step"] for r in steps] == [0, 1]
    assert all(r["rollout/samples"] == 16 and r["train/skipped_steps"] == 0 for r in steps)
    assert all(r["train/rollout_logprob_abs_diff"] < 0.3 for r in steps)  # FP8 on both sides, random weights
    assert "eval/reward_mean" in rows[-1]
    assert (ckpt / "latest").exists()
