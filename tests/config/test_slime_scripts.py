"""slime's own launch scripts, as bash expands them (`tools/expand_slime_script.py`), started with --dry-run
against stub model and data directories: every flag is taken, and what stops a script is a named feature.

Each case pins what is left: the problems a start reports that are not this machine's (no SGLang, no wandb,
the script's own plugin modules not on the path). When a feature lands, its line goes from here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from async_rl.config import parse_config
from async_rl.startup_checks import startup_problems
from tests.config.slime_script_stubs import stub_argv

SCRIPTS = Path(__file__).parent / "slime_scripts"
MACHINE = ("needs SGLang", "needs the wandb package", "cannot import module")

COLOCATED_TP = "--colocate with --rollout-num-gpus-per-engine > 1"
SP = "--sequence-parallel is not supported by --train-backend megatron"
PP = "--pipeline-model-parallel-size is not supported by --train-backend megatron"
CP = "--context-parallel-size is not supported by --train-backend megatron"
MOE_TP = "with a MoE model needs --sequence-parallel"
UNEVEN_PP = "--decoder-last-pipeline-num-layers: pipeline stages of unequal layer counts"

# script -> what stops it, besides this machine
EXPECTED: dict[str, tuple[str, ...]] = {
    "multi_task": ("--eval-config: eval sets from a YAML file",),
    "retool_qwen3_4b_rl": (COLOCATED_TP, SP),
    "retool_qwen3_4b_sft": ("--rollout-function-path slime.rollout.sft_rollout.generate_rollout: not built yet",),
    "run-deepseek-r1": (UNEVEN_PP,),
    "run-glm4-9B": (CP,),
    "run-glm4.7-30B-A3B-delta": ("--update-weight-transport: weight updates through files on disk",),
    "run-glm4.7-30B-A3B": (UNEVEN_PP,),
    "run-glm5-744B-A40B": (UNEVEN_PP,),
    "run-kimi-k2-Thinking-int4": (UNEVEN_PP,),
    "run-kimi-k2-Thinking": (UNEVEN_PP,),
    "run-mimo-7B-rl-eagle": ("--enable-mtp-training: training multi-token-prediction layers",),
    "run-minimax-m2": (COLOCATED_TP, PP, MOE_TP, "--rollout-num-gpus-per-engine 16 must divide --num-gpus-per-node 8"),
    "run-moonlight-16B-A3B-int4": (COLOCATED_TP, SP, MOE_TP),
    "run-moonlight-16B-A3B": (COLOCATED_TP, SP, MOE_TP),
    "run-qwen2.5-0.5B-fully_async": (),
    "run-qwen2.5-0.5B-gb10-smoke": (),
    "run-qwen2.5-0.5B-reproducibility": (),
    "run-qwen3-235B-A22B-int4": (UNEVEN_PP,),
    "run-qwen3-30B-A3B-int4": (SP, MOE_TP),
    "run-qwen3-30B-A3B-multi-agent": ("--use-rollout-logprobs: training against the engines' log-probs",),
    "run-qwen3-30B-A3B": (COLOCATED_TP, SP, MOE_TP),
    "run-qwen3-30b-a3b-fp8": (COLOCATED_TP, PP),
    "run-qwen3-32B": (COLOCATED_TP, SP),
    "run-qwen3-4B-base-sft": ("--rollout-function-path slime.rollout.sft_rollout.generate_rollout",),
    "run-qwen3-4B": (COLOCATED_TP, SP),
    "run-qwen3-4b-fp8": (COLOCATED_TP, SP),
    "run-qwen3-4b-mis": ("--custom-config-path: slime's YAML of extra arguments",),
    "run-qwen3-8B-opd-megatron": ("--use-opd: on-policy distillation",),
    "run-qwen3.5-9B-fully_async": (SP,),
    "run_geo3k_qwen35": ("--multimodal-keys: multimodal prompts",),
    "run_qwen2.5_3B": (COLOCATED_TP, SP),
    "run_qwen36_35b_a3b_swe_8nodes": (COLOCATED_TP, CP, MOE_TP),
    "run_qwen3_4B": (SP,),
    "strands_qwen3_8b": (COLOCATED_TP, SP),
}


def problems(name: str, root: Path, capsys) -> list[str]:
    record = json.loads((SCRIPTS / f"{name}.json").read_text())
    argv = stub_argv(record["argv"], record["script"], root)
    try:
        cfg, _ = parse_config(argv, async_mode=record["entry"] == "train_async.py")
    except SystemExit:
        return [capsys.readouterr().err.strip()]
    return [p for p in startup_problems(cfg) if not any(m in p for m in MACHINE)]


def test_every_expanded_script_has_a_pinned_outcome():
    assert sorted(EXPECTED) == sorted(p.stem for p in SCRIPTS.glob("*.json"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_slime_script_starts_or_names_what_is_missing(name, tmp_path, capsys):
    found = problems(name, tmp_path, capsys)
    assert not any("unrecognized arguments" in p for p in found), found
    assert len(found) == len(EXPECTED[name]), found
    for expected in EXPECTED[name]:
        assert any(expected in p for p in found), (expected, found)


def test_the_model_flags_are_checked_against_config_json(tmp_path, capsys):
    record = json.loads((SCRIPTS / "run-qwen2.5-0.5B-gb10-smoke.json").read_text())
    argv = stub_argv(record["argv"], record["script"], tmp_path)
    model = Path(argv[argv.index("--hf-checkpoint") + 1])
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 12}))
    cfg, _ = parse_config(argv)
    mismatch = [p for p in startup_problems(cfg) if "--num-layers" in p]
    assert mismatch == [f"--num-layers {config['num_hidden_layers']} does not match {model}/config.json's "
                        f"num_hidden_layers 12"]


def test_the_dry_run_says_what_each_taken_flag_does(tmp_path):
    record = json.loads((SCRIPTS / "run-qwen3-4B.json").read_text())
    cfg, _ = parse_config(stub_argv(record["argv"], record["script"], tmp_path))
    notes = "\n".join(cfg.notes)
    assert re.search(r"^--num-layers 36: checked against config\.json$", notes, re.M)
    assert "--attention-backend flash: changes nothing here" in notes
    assert "--bf16: on (the default on GPUs, as in slime" in notes
    assert cfg.backend.rollout_backend == "sglang" and cfg.backend.train_backend == "megatron"
    assert cfg.megatron.use_distributed_optimizer and cfg.cluster.offload_train
