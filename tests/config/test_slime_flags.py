import json

import pytest

from async_rl.checkpoint import LATEST, checkpoint_to_resume, is_first_launch
from async_rl.config import ConfigError, parse_config
from async_rl.config.slime_flags import split_slime_args

REQUIRED = ["--hf-checkpoint", "model", "--prompt-data", "train.jsonl"]


def test_slime_flags_leave_argv_with_their_values_and_the_rest_in_order():
    rest, slime = split_slime_args(["--lr", "1e-6", "--swiglu", "--num-layers", "36", "--spec", "pkg.mod", "get_spec",
                                    "--moe-layer-freq=[0]*3+[1]*58", "--seed", "3"])
    assert rest == ["--lr", "1e-6", "--seed", "3"]
    assert slime.values == {"--swiglu": True, "--num-layers": "36", "--spec": ["pkg.mod", "get_spec"],
                            "--moe-layer-freq": "[0]*3+[1]*58"}


@pytest.mark.parametrize("argv, named", [
    (["--use-opd"], "--use-opd: on-policy distillation is not built yet"),
    (["--hidden-dropout", "0.1"], r"--hidden-dropout 0.1: not built yet \(here: no dropout\)"),
    (["--moe-aux-loss-coeff", "1e-3"], "--moe-aux-loss-coeff 1e-3: not built yet"),
    (["--rollout-function-path", "my.rollout.fn"], "--rollout-function-path my.rollout.fn"),
    (["--num-layers"], "argument --num-layers: expected a value"),
])
def test_a_feature_not_built_stops_with_one_line_naming_its_flag(argv, named):
    with pytest.raises(ConfigError, match=named):
        split_slime_args(argv)


def test_model_flags_agree_with_config_json_or_name_both_values():
    _, slime = split_slime_args(["--num-layers", "36", "--norm-epsilon", "1e-6", "--rotary-base", "1000000",
                                 "--num-experts", "128", "--kv-lora-rank", "512", "--swiglu"])
    config = {"num_hidden_layers": 36, "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 1000000.0},
              "num_experts": 64}
    assert slime.model_mismatches(config, "/m") == ["--num-experts 128 does not match /m/config.json's num_experts 64"]


def test_an_fp8_checkpoint_rolls_out_in_its_own_fp8_layout_unless_the_flags_say_otherwise(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "w8a8_fp8"}}))
    argv = ["--hf-checkpoint", str(tmp_path), "--prompt-data", "train.jsonl"]
    cfg = parse_config(argv)[0]
    assert cfg.rollout.fp8_layout == "channel" and any("from --hf-checkpoint's FP8 weights" in n for n in cfg.notes)
    assert parse_config([*argv, "--rollout-quantization", "none"])[0].rollout.fp8_layout is None


def test_first_launch_starts_afresh_only_where_no_checkpoint_could_be_lost(tmp_path):
    save = tmp_path / "ckpt"
    assert is_first_launch(str(save), str(save))  # slime's --load = --save before the first save
    assert is_first_launch(str(tmp_path / "missing"), None)
    (tmp_path / "empty").mkdir()
    assert checkpoint_to_resume(str(tmp_path / "empty"), None) is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a checkpoint")
    assert not is_first_launch(str(other), None)  # a wrong path is an error, not a fresh start
    save.mkdir()
    (save / LATEST).write_text("step_4")
    assert not is_first_launch(str(save), str(save))
    assert not is_first_launch(str(tmp_path / "missing"), str(save))  # would save over the earlier run


def test_eval_sampling_falls_back_to_the_rollouts_and_top_k_is_checked(capsys):
    cfg = parse_config([*REQUIRED, "--rollout-top-p", "0.9", "--eval-top-k", "1", "--rollout-stop-token-ids", "7", "8"])[0]
    train, evaluation = cfg.sampling_params(), cfg.sampling_params(evaluation=True)
    assert (train.top_p, train.top_k, train.stop_token_ids) == (0.9, -1, (7, 8))
    assert (evaluation.top_p, evaluation.top_k, evaluation.stop_token_ids) == (0.9, 1, (7, 8))
    with pytest.raises(SystemExit):
        parse_config([*REQUIRED, "--eval-top-k", "0"])
    assert "--eval-top-k must be -1 (off) or >= 1, got 0" in capsys.readouterr().err
