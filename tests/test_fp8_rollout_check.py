"""FP8 rollout flags against the checkpoint: its layout decides what the SGLang engine serves and can be pushed."""

import json
import subprocess
import sys

import pytest

from async_rl.backends.sglang.checks import check_fp8_rollout
from async_rl.config import parse_config
from async_rl.errors import UserInputError
from async_rl.startup_checks import startup_problems
from async_rl.weights.fp8 import quantization_config
from tests.conftest import REPO


def checkpoint(tmp_path, granularity):
    config = {"model_type": "qwen2"} | ({"quantization_config": quantization_config(granularity)} if granularity else {})
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("stored, flags, ok", [
    (None, [], True),
    (None, ["--rollout-quantization", "fp8", "--rollout-fp8-granularity", "channel"], True),
    ("block", ["--rollout-quantization", "fp8"], True),
    ("channel", ["--rollout-quantization", "fp8", "--rollout-fp8-granularity", "channel"], True),
    ("channel", ["--rollout-quantization", "fp8"], True),  # the layout comes from the checkpoint
    ("block", [], True),  # FP8 and its layout come from the checkpoint, as slime infers them
    ("block", ["--rollout-quantization", "none"], False),
    ("channel", ["--rollout-fp8-granularity", "block"], False),
])
def test_flags_must_name_the_checkpoint_layout(tmp_path, stored, flags, ok):
    cfg = parse_config(["--hf-checkpoint", checkpoint(tmp_path, stored), "--prompt-data", "x.jsonl", *flags])[0]
    if ok:
        check_fp8_rollout(cfg)
    else:
        with pytest.raises(UserInputError, match=f"holds {stored}-wise FP8 weights: run with --rollout-quantization fp8 "
                                                 f"--rollout-fp8-granularity {stored}"):
            check_fp8_rollout(cfg)


def test_channel_fp8_for_a_moe_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_experts": 128}))
    cfg = parse_config(["--hf-checkpoint", str(tmp_path), "--prompt-data", "x.jsonl", "--rollout-quantization", "fp8",
                        "--rollout-fp8-granularity", "channel"])[0]
    with pytest.raises(UserInputError, match="does not take weight pushes into MoE experts yet"):
        check_fp8_rollout(cfg)


@pytest.mark.parametrize("tp_size, refused", [("1", False), ("2", True)])
def test_an_fp8_checkpoint_must_quantize_exactly_what_a_push_quantizes(tiny_model, tmp_path, tp_size, refused):
    """tools/bf16_cast_fp8.py keeps weights whose TP shards would split 128-blocks in BF16 (ignored_layers); pushes
    quantize every linear weight, so such a checkpoint is refused at start-up, SGLang or not on this machine."""
    out = tmp_path / "fp8"
    subprocess.run([sys.executable, str(REPO / "tools" / "bf16_cast_fp8.py"), "--input-bf16-hf-path", str(tiny_model),
                    "--output-fp8-hf-path", str(out), "--tensor-parallel-size", tp_size], check=True, capture_output=True)
    cfg = parse_config(["--hf-checkpoint", str(out), "--prompt-data", str(tiny_model / "data" / "train.jsonl"),
                        "--output-dir", str(tmp_path / "run"), "--rollout-backend", "sglang",
                        "--actor-num-gpus-per-node", "1", "--colocate", "--rollout-quantization", "fp8"])[0]
    found = [p for p in startup_problems(cfg) if "quantized differently" in p]
    if refused:
        assert len(found) == 1 and "(BF16 in the checkpoint, FP8 in a push)" in found[0] and "\n" not in found[0]
    else:
        assert found == []
