"""benchmarks/bench_rollout.py refuses a mode it cannot run before it starts any engine, naming what is valid."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("mode", ["fp9", "fp8+kv-fp4", "bf16+flashinfer+triton"])
def test_a_bad_mode_is_one_line_naming_the_weights_and_options(mode):
    result = subprocess.run([sys.executable, "benchmarks/bench_rollout.py", "--model-config",
                             "benchmarks/model_configs/qwen2.5-7b.json", "--modes", "bf16", mode],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"'{mode}': weights are one of bf16, fp8, fp8-tuned, fp8-channel" in result.stderr
    assert "+flashinfer" in result.stderr and "(at most one attention backend)" in result.stderr
