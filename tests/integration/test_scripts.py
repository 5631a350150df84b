"""Launch scripts: every --dry-run works on a CPU machine, its GPU plan adds up, and YAML twins agree."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

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


# Problems a dry run on this machine may report because a GPU package is not installed here (CI has neither)
def missing_here() -> list[str]:
    from async_rl.backends.megatron.model import transformer_engine_importable

    missing = ["needs SGLang"] if importlib.util.find_spec("sglang") is None else []
    return missing + ([] if transformer_engine_importable() else ["needs Transformer Engine"])


@pytest.fixture(scope="module")
def stub_root(tmp_path_factory, tiny_model) -> Path:
    """What the recipes expect under /root: models (a config.json of the real shape and a tokenizer), the data
    files, and the stage-1 checkpoint stage 2 loads."""
    root = tmp_path_factory.mktemp("root")
    for name, shape in (("Qwen2.5-7B", "qwen2.5-7b"), ("Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b"),
                        ("Qwen3-30B-A3B", "qwen3-30b-a3b")):
        model = root / "models" / name
        model.mkdir(parents=True)
        shutil.copy(REPO / "benchmarks" / "model_configs" / f"{shape}.json", model / "config.json")
        for f in tiny_model.glob("tokenizer*"):
            shutil.copy(f, model / f.name)
    rows = REPO / "tests" / "fixtures" / "gsm8k_test_head24.jsonl"
    (root / "data" / "gsm8k").mkdir(parents=True)
    for data in ("dapo-math-17k.jsonl", "aime-2024.jsonl"):
        shutil.copy(rows, root / "data" / data)
    hf_gsm8k = [json.dumps({"question": r["prompt"], "answer": f"... #### {r['label']}"})  # the Hub's layout
                for r in map(json.loads, rows.read_text().splitlines())]
    for split in ("train", "test"):
        (root / "data" / "gsm8k" / f"{split}.jsonl").write_text("\n".join(hf_gsm8k) + "\n")
    stage1 = root / "checkpoints" / "qwen2.5-7b-dapo-fp8" / "stage1"
    stage1.mkdir(parents=True)
    (stage1 / "driver_state.json").write_text("{}")
    return root


def stub_env(script: str, stub_root: Path | None) -> dict[str, str]:
    """The script's path variables pointed from /root into `stub_root` (unchanged without one)."""
    if stub_root is None:
        return {}
    text = (REPO / "scripts" / script).read_text()
    defaults = dict(re.findall(r'^(HF_CHECKPOINT|DATA_DIR|CKPT_DIR)=\$\{\w+:-(/root/[^}]*)\}', text, flags=re.M))
    return {name: path.replace("/root", str(stub_root), 1) for name, path in defaults.items()}


def run_dry(argv: list[str], env: dict[str, str]) -> tuple[dict, str, list[str]]:
    """A dry run's configuration, plan and problems (the lines it reports as errors)."""
    result = subprocess.run(argv, cwd=REPO, env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)
    config_text, plan = result.stdout.split("resolved configuration:\n", 1)[1].split("placement plan:", 1)
    problems = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == (2 if problems else 0), result.stderr
    return OmegaConf.to_container(OmegaConf.create(config_text)), "placement plan:" + plan, problems


def dry_run(script: str, env: str, *extra: str, stub_root: Path | None = None) -> tuple[dict, str, list[str]]:
    environment = dict([env.split("=")] if env else []) | stub_env(script, stub_root)
    return run_dry(["bash", str(REPO / "scripts" / script), "--dry-run", *extra], environment)


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
    channel_fp8 = cfg["rollout_fp8_granularity"] == "channel" and cfg["rollout_quantization"] == "fp8"
    mode = "tensor" if cfg["colocate"] or channel_fp8 else "distributed"
    assert f"--update-weight-mode {mode})" in plan


@pytest.mark.parametrize("script, env", list(SCRIPTS))
def test_dry_run_prints_a_plan_whose_gpu_counts_add_up_and_passes_the_start_up_checks(script, env, stub_root):
    """Every check a real start runs, against stub models and data: the only problems allowed are GPU packages
    this machine lacks."""
    cfg, plan, problems = dry_run(script, env, stub_root=stub_root)
    if cfg["actor_num_gpus_per_node"]:
        check_plan_adds_up(cfg, plan)
    else:
        assert "CPU only" in plan
    assert all(any(m in p for m in missing_here()) for p in problems), problems


@pytest.mark.parametrize("twin", sorted({t for t in SCRIPTS.values() if t}))
def test_yaml_twins_pass_the_start_up_checks(twin, stub_root, tmp_path):
    config = tmp_path / "twin.yaml"
    config.write_text((REPO / twin).read_text().replace("/root/", f"{stub_root}/"))
    _, _, problems = run_dry(["python", "-m", "async_rl.train", "--config", str(config), "--dry-run"], {})
    assert all(any(m in p for m in missing_here()) for p in problems), problems


def test_embedded_dry_run_on_a_fresh_clone_says_the_model_is_built_first(tmp_path):
    cfg, plan, problems = run_dry(["bash", "scripts/run_embedded_cpu.sh", "--dry-run"],
                                  {"MODEL_DIR": str(tmp_path / "not_built"), "OUTPUT_DIR": str(tmp_path / "out")})
    assert problems == [] and cfg["hf_checkpoint"] == str(tmp_path / "not_built")


def test_a_recipe_pointing_at_missing_files_fails_its_dry_run_naming_each_flag(tmp_path):
    (tmp_path / "a_file").write_text("")  # a checkpoint directory cannot be made under a file
    _, _, problems = dry_run("run_qwen2.5_0.5b_gsm8k_dapo_tis.sh", "", "--save", str(tmp_path / "a_file" / "ckpt"),
                             stub_root=tmp_path)
    assert any("--hf-checkpoint" in p and "no such directory" in p for p in problems)
    assert any("--prompt-data" in p and "file not found" in p for p in problems)
    assert any(f"--save {tmp_path / 'a_file' / 'ckpt'}: cannot write there" in p for p in problems)


def test_cluster_flags_pass_through_and_change_the_plan():
    cfg, plan, _ = dry_run("run_qwen2.5_7b_dapo_fp8_curriculum.sh", "", "--actor-num-nodes", "1",
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
    from_script, _, _ = dry_run(script, env)
    from_yaml, _ = parse_config(["--config", str(REPO / SCRIPTS[(script, env)])])
    assert from_yaml.to_flat_dict() == from_script
