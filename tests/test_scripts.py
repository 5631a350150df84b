"""Launch scripts: every --dry-run works on a CPU machine, its GPU plan adds up, and YAML twins agree."""

import os
import re
import subprocess

import pytest
from omegaconf import OmegaConf

from async_rl.config import parse_config
from tests.conftest import REPO

SCRIPTS = {  # script, environment -> its YAML twin
    ("run_qwen2.5_7b_dapo_fp8_curriculum.sh", "STAGE=1"): "configs/qwen2.5_7b_dapo_fp8_stage1.yaml",
    ("run_qwen2.5_7b_dapo_fp8_curriculum.sh", "STAGE=2"): "configs/qwen2.5_7b_dapo_fp8_stage2.yaml",
    ("run_qwen3_30b_a3b_fp8_e2e.sh", ""): "configs/qwen3_30b_a3b_fp8_e2e.yaml",
    ("run_qwen2.5_0.5b_gsm8k_dapo_tis.sh", "ROLLOUT_PRECISION=fp8"): "configs/qwen2.5_0.5b_gsm8k_dapo_tis.yaml",
    ("run_qwen2.5_0.5b_gsm8k_dapo_tis.sh", "ROLLOUT_PRECISION=bf16"): None,
    ("run_embedded_cpu.sh", ""): None,
}


def dry_run(script: str, env: str, *extra: str) -> tuple[dict, str]:
    environment = dict(os.environ, **dict([env.split("=")] if env else []))
    result = subprocess.run(["bash", str(REPO / "scripts" / script), "--dry-run", *extra], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    config_text, plan = result.stdout.split("resolved configuration:\n", 1)[1].split("placement plan:", 1)
    return OmegaConf.to_container(OmegaConf.create(config_text)), "placement plan:" + plan


def check_plan_adds_up(cfg: dict, plan: str) -> None:
    header = re.search(r"(\d+) node\(s\) x (\d+) GPUs; trainer (\d+) GPUs, rollout (\d+) GPUs in (\d+) engine\(s\) of (\d+)", plan)
    nodes, per_node, trainer, rollout, engines, per_engine = map(int, header.groups())
    assert trainer == cfg["actor_num_nodes"] * cfg["actor_num_gpus_per_node"]
    assert rollout == engines * per_engine and per_engine == cfg["rollout_num_gpus_per_engine"]
    assert rollout == (trainer if cfg["colocate"] else cfg["rollout_num_gpus"])
    gpu_lines = re.findall(r"^    gpu \d+: (.*)$", plan, flags=re.M)
    assert len(gpu_lines) == nodes * per_node  # every GPU of every node listed once
    assert sum(line.count("trainer rank") for line in gpu_lines) == trainer
    assert sum(line.count("engine ") for line in gpu_lines) == rollout
    ranks = sorted(int(r) for r in re.findall(r"trainer rank (\d+)", plan))
    assert ranks == list(range(trainer))
    for engine in range(engines):
        assert len(re.findall(rf"engine {engine} \(tp", plan)) == per_engine
    if not cfg["colocate"]:
        assert all(line.count("+") == 0 for line in gpu_lines)  # disaggregated: no GPU does two jobs
    mode = "tensor" if cfg["colocate"] or cfg["rollout_fp8_granularity"] == "channel" and cfg["rollout_quantization"] == "fp8" else "distributed"
    assert f"--update-weight-mode {mode})" in plan


@pytest.mark.parametrize("script, env", list(SCRIPTS))
def test_dry_run_prints_the_config_and_a_plan_whose_gpu_counts_add_up(script, env):
    cfg, plan = dry_run(script, env)
    if cfg["actor_num_gpus_per_node"]:
        check_plan_adds_up(cfg, plan)
    else:
        assert "CPU only" in plan


def test_cluster_flags_pass_through_and_change_the_plan():
    cfg, plan = dry_run("run_qwen2.5_7b_dapo_fp8_curriculum.sh", "", "--actor-num-nodes", "1",
                        "--rollout-num-gpus", "8", "--rollout-num-gpus-per-engine", "2")
    assert (cfg["actor_num_nodes"], cfg["rollout_num_gpus"], cfg["rollout_num_gpus_per_engine"]) == (1, 8, 2)
    check_plan_adds_up(cfg, plan)
    assert "2 node(s)" in plan and "in 4 engine(s) of 2" in plan


def test_an_impossible_layout_is_one_line_and_exit_code_2():
    result = subprocess.run(["bash", "scripts/run_qwen3_30b_a3b_fp8_e2e.sh", "--dry-run", "--tensor-model-parallel-size", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--tensor-model-parallel-size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script, env", [k for k, twin in SCRIPTS.items() if twin])
def test_yaml_twin_resolves_to_the_same_configuration_as_its_script(script, env):
    from_script, _ = dry_run(script, env)
    from_yaml, _ = parse_config(["--config", str(REPO / SCRIPTS[(script, env)])])
    assert from_yaml.to_flat_dict() == from_script
