"""The SGLang server's environment: DeepGEMM where nvcc can compile its kernels (on first use), off where it
cannot, and the user's own setting always kept."""

import pytest

from async_rl.backends.sglang import deepgemm_env
from async_rl.backends.sglang.deepgemm_env import ENABLE, PRECOMPILE, server_environment


@pytest.fixture
def toolkit(tmp_path, monkeypatch):
    """A CUDA toolkit directory with an nvcc in it; the machine's own /usr/local/cuda is out of the picture."""
    monkeypatch.setattr(deepgemm_env, "DEFAULT_TOOLKIT", tmp_path / "no-default-toolkit")
    nvcc = tmp_path / "cuda-13.0" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    return nvcc.parent.parent


def test_a_toolkit_on_the_path_turns_deepgemm_on_compiling_on_first_use(toolkit):
    env = server_environment({"PATH": str(toolkit / "bin")})
    assert env["CUDA_HOME"] == str(toolkit) and env[PRECOMPILE] == "0" and ENABLE not in env


def test_cuda_home_is_kept_and_used(toolkit):
    env = server_environment({"CUDA_HOME": str(toolkit), "PATH": "/nowhere", PRECOMPILE: "1"})
    assert env["CUDA_HOME"] == str(toolkit) and env[PRECOMPILE] == "1"


def test_without_nvcc_deepgemm_is_off(toolkit):
    env = server_environment({"PATH": "/nowhere", "HOME": "/root"})
    assert env[ENABLE] == "0" and "CUDA_HOME" not in env and env["HOME"] == "/root"


def test_the_users_choice_wins(toolkit):
    assert server_environment({"PATH": str(toolkit / "bin"), ENABLE: "0"}) == {"PATH": str(toolkit / "bin"), ENABLE: "0"}
