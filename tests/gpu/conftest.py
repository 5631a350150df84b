"""Models shared by the GPU tests: the embedded arithmetic model at a GPU-friendly width, and its FP8 twins."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

# Engine settings that run on one GPU beside a trainer and a second engine
SGLANG_SERVER = dict(dtype="bfloat16", attention_backend="triton", sampling_backend="pytorch", mem_fraction_static=0.3,
                     context_length=256, cuda_graph_max_bs_decode=16, log_level="warning")


def run_to_completion(cmd: list[str], timeout: int) -> None:
    """A training command whose output goes where pytest's does (live under -s, shown with a failure), so that a run
    that fails or times out leaves its log, which captured output kept only until the call returned."""
    result = subprocess.run(cmd, cwd=REPO, timeout=timeout)
    assert result.returncode == 0, f"{cmd[2]} exited with status {result.returncode}: its output is above"


@pytest.fixture(scope="session")
def sglang_models(tmp_path_factory):
    """`bf16` (width 256, head dim 64, SFT'd to do sums) and `fp8-block`, `fp8-channel` from tools/bf16_cast_fp8.py.

    The SFT runs on the GPU: on one CPU thread it took 83 s of every GPU session that ran these tests."""
    root = tmp_path_factory.mktemp("sglang_models")
    subprocess.run([sys.executable, "tools/make_tiny_model.py", "--output-dir", str(root / "bf16"), "--hidden-size", "256",
                    "--sft-steps", "300", "--device", "cuda"], cwd=REPO, check=True)
    for granularity in ("block", "channel"):
        subprocess.run([sys.executable, "tools/bf16_cast_fp8.py", "--input-bf16-hf-path", str(root / "bf16"),
                        "--output-fp8-hf-path", str(root / f"fp8-{granularity}"), "--granularity", granularity],
                       cwd=REPO, check=True)
    return root
