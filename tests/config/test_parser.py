import pytest
from omegaconf import OmegaConf

from async_rl.config import parse_config

REQUIRED = ["--hf-checkpoint", "model", "--prompt-data", "train.jsonl"]


def parse(*argv):
    return parse_config([*REQUIRED, *argv])[0]


def write_yaml(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def error_of(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        parse_config(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_defaults_fill_typed_sections():
    cfg = parse()
    assert cfg.rollout.rollout_batch_size == 8 and cfg.train.eps_clip == 0.2
    assert cfg.global_batch_size == cfg.rollout.rollout_batch_size * cfg.rollout.n_samples_per_prompt
    assert cfg.backend.rollout_backend == "local" and cfg.backend.train_backend == "torch"


def test_yaml_sets_defaults_and_command_line_wins(tmp_path):
    path = write_yaml(tmp_path, "lr: 3.0e-5\nrollout_batch_size: 4\nuse_tis: true\n")
    cfg = parse("--config", path, "--rollout-batch-size", "2")
    assert cfg.train.lr == 3e-5
    assert cfg.rollout.rollout_batch_size == 2
    assert cfg.train.use_tis is True
    assert parse("--config", path, "--no-use-tis").train.use_tis is False


def test_config_files_layer_in_order_under_the_command_line(tmp_path):
    """The embedded script passes its own YAML; a user's --config after it changes only what it sets."""
    base = tmp_path / "base.yaml"
    base.write_text("lr: 3.0e-5\nrollout_batch_size: 4\nuse_tis: true\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text("lr: 1.0e-4\n")
    for argv in (["--config", str(base), "--config", str(mine)], ["--config", str(base), str(mine)]):
        cfg = parse(*argv, "--rollout-batch-size", "2")
        assert (cfg.train.lr, cfg.rollout.rollout_batch_size, cfg.train.use_tis) == (1e-4, 2, True)


def test_a_saved_config_replays_the_loop_it_ran_with(tmp_path):
    cfg, launch = parse_config([*REQUIRED, "--async"])
    assert launch.async_mode and cfg.async_mode
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    replayed, launch = parse_config(["--config", str(path)])
    assert launch.async_mode and replayed == cfg


def test_slime_flag_meanings():
    """--kl-coef is the reward KL and --kl-loss-coef the loss KL, as in slime; low_var_kl is accepted."""
    cfg = parse("--use-kl-loss", "--kl-loss-coef", "0.01", "--kl-loss-type", "low_var_kl")
    assert (cfg.train.kl_coef, cfg.train.kl_loss_coef, cfg.train.kl_loss_type) == (0.0, 0.01, "low_var_kl")
    cfg = parse("--rollout-batch-size", "8", "--n-samples-per-prompt", "4", "--num-steps-per-rollout", "4")
    assert cfg.global_batch_size == 8 and cfg.total_optimizer_steps == 4 * cfg.rollout.num_rollout
    assert parse("--optimizer", "adam", "--lr-decay-style", "cosine", "--min-lr", "0").train.lr_decay_style == "cosine"


def test_tis_imp_ratio_cap_is_an_alias_of_tis_clip():
    assert parse("--use-tis", "--tis-imp-ratio-cap", "3.5").train.tis_clip == 3.5


def test_icepop_is_a_mask_with_its_own_bounds_unless_the_flags_set_them():
    t = parse("--use-tis", "--tis-mode", "icepop").train
    assert (t.tis_mode, t.tis_clip_low, t.tis_clip) == ("icepop", 0.5, 5.0)
    t = parse("--use-tis", "--tis-mode", "icepop", "--tis-clip", "3", "--tis-clip-low", "0.2").train
    assert (t.tis_clip_low, t.tis_clip) == (0.2, 3.0)
    assert parse("--use-tis", "--tis-mode", "mask").train.tis_clip == 2.0  # mask keeps the plain defaults
    with pytest.raises(SystemExit):
        parse("--tis-mode", "icepop")  # without --use-tis


def test_async_flag_selects_async_mode():
    assert parse_config([*REQUIRED, "--async"])[1].async_mode is True
    assert parse_config(REQUIRED)[1].async_mode is False


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--rollout-batch-siz", "3"], "--rollout-batch-siz"),  # no prefix matching
        (["--tis-clip", "3"], "--tis-clip"),
        (["--eps-clip", "0.3", "--eps-clip-high", "0.2"], "--eps-clip-high"),
        (["--global-batch-size", "5"], "--global-batch-size"),
        (["--micro-batch-size", "3"], "--micro-batch-size"),
        (["--save-interval", "2"], "--save-interval"),
        (["--eval-interval", "2"], "--eval-interval"),
        (["--n-samples-per-prompt", "1"], "--n-samples-per-prompt"),
        (["--rollout-num-gpus", "6", "--rollout-num-gpus-per-engine", "4"], "--rollout-num-gpus"),
        (["--rollout-backend", "vllm"], "--rollout-backend"),
        (["--tensor-model-parallel-size", "2"], "--tensor-model-parallel-size"),  # a Megatron flag without Megatron
        (["--train-backend", "megatron", "--actor-num-gpus-per-node", "4", "--tensor-model-parallel-size", "3"],
         "--tensor-model-parallel-size"),
        (["--train-backend", "megatron", "--actor-num-gpus-per-node", "2", "--fp8-recipe", "blockwise"], "--fp8-recipe"),
        (["--train-backend", "megatron", "--actor-num-gpus-per-node", "2", "--bf16", "--fp8-format", "e4m3",
          "--transformer-impl", "local"], "--fp8-format needs Transformer Engine"),
        (["--train-backend", "megatron", "--actor-num-gpus-per-node", "2", "--fp8-param-gather"], "--fp8-param-gather"),
        (["--tis-mode", "mask"], "--tis-mode"),
        (["--use-tis", "--tis-clip-low", "0.5"], "--tis-clip-low"),
        (["--eps-clip-c", "0.5"], "--eps-clip-c"),
        (["--kl-loss-coef", "0.01"], "--kl-loss-coef weighs the KL loss: add --use-kl-loss"),
        (["--num-steps-per-rollout", "3"], "--num-steps-per-rollout 3 must divide"),
        (["--num-steps-per-rollout", "2", "--global-batch-size", "32"], "disagree"),
        (["--min-lr", "1"], "--min-lr"),
        (["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
        (["--eval-prompt-data", "e.jsonl", "--eval-interval", "-5"], "--eval-interval must be >= 1, got -5"),
        (["--save", "ckpt", "--save-interval", "0"], "--save-interval must be >= 1, got 0"),
        (["--rollout-max-context-len", "1"], "--rollout-max-context-len"),
        (["--advantage-estimator", "dr_grpo"], "--advantage-estimator"),
        (["--overlong-buffer-len", "100"], "--overlong-buffer-len"),
        (["--overlong-penalty-factor", "2"], "--overlong-penalty-factor"),
        (["--over-sampling-batch-size", "16"], "--over-sampling-batch-size"),
        (["--dynamic-sampling-filter-path", "m:f", "--over-sampling-batch-size", "4"], "--over-sampling-batch-size"),
        (["--adaptive-over-sampling"], "set --dynamic-sampling-filter-path"),
        (["--async", "--dynamic-sampling-filter-path", "m:f", "--adaptive-over-sampling"], "the async loop already admits"),
    ],
)
def test_bad_or_contradictory_flags_fail_with_one_line_naming_the_flag(capsys, argv, named):
    assert named in error_of(capsys, *REQUIRED, *argv)


def test_missing_required_flag_is_named(capsys):
    assert "--hf-checkpoint" in error_of(capsys, "--prompt-data", "x.jsonl")


def test_negative_staleness_and_sync_partial_rollout_are_rejected(capsys):
    assert "--max-staleness" in error_of(capsys, *REQUIRED, "--async", "--max-staleness", "-1")
    assert "--partial-rollout" in error_of(capsys, *REQUIRED, "--partial-rollout")


def test_unknown_yaml_key_names_key_and_file(capsys, tmp_path):
    path = write_yaml(tmp_path, "rollout_batch_sise: 4\n")
    err = error_of(capsys, *REQUIRED, "--config", path)
    assert "rollout_batch_sise" in err and path in err


def test_yaml_value_of_wrong_type_is_named(capsys, tmp_path):
    path = write_yaml(tmp_path, "use_tis: maybe\n")
    assert "use_tis" in error_of(capsys, *REQUIRED, "--config", path)


def test_malformed_yaml_is_one_line_naming_file_and_line(capsys, tmp_path):
    path = write_yaml(tmp_path, "lr: [1, 2\nnum_rollout: 3\n")
    assert f"--config {path}: not valid YAML (line 2, column 12)" in error_of(capsys, *REQUIRED, "--config", path)


def test_the_flag_alone_turns_off_the_eval_sets_a_config_names(tmp_path):
    path = write_yaml(tmp_path, "eval_prompt_data: [e.jsonl]\neval_interval: 5\n")
    cfg, _ = parse_config([*REQUIRED, "--config", path, "--eval-prompt-data"])
    assert cfg.eval.eval_prompt_data == []


def test_missing_config_file_is_named(capsys, tmp_path):
    assert "--config" in error_of(capsys, *REQUIRED, "--config", str(tmp_path / "nope.yaml"))


def test_saved_flat_config_reloads_to_the_same_configuration(tmp_path):
    cfg = parse("--lr", "1e-5", "--use-tis", "--eval-prompt-data", "a", "a.jsonl", "b", "b.jsonl")
    path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(cfg.to_flat_dict()), path)
    assert parse_config(["--config", str(path)])[0] == cfg


def test_sglang_server_flags_pass_through_from_flags_and_yaml_and_round_trip(tmp_path):
    path = write_yaml(tmp_path, "rollout_backend: sglang\nsglang_attention_backend: triton\nsglang_mem_fraction_static: 0.3\n")
    cfg = parse("--config", path, "--sglang-mem-fraction-static", "0.5", "--sglang-disable-cuda-graph",
                "--sglang-context-length=4096")
    assert cfg.sglang == {"attention_backend": "triton", "mem_fraction_static": 0.5, "disable_cuda_graph": True,
                          "context_length": 4096}  # the command line wins over the file
    saved = tmp_path / "saved.yaml"
    saved.write_text(cfg.to_yaml())
    assert parse_config(["--config", str(saved)])[0] == cfg


@pytest.mark.parametrize("argv, named", [
    (["--sglang-mem-fraction-static", "0.5"], "--sglang-mem-fraction-static"),  # the local backend has no server
    (["--rollout-backend", "sglang", "--sglang-model-path", "x"], "--hf-checkpoint"),
    (["--rollout-backend", "sglang", "--sglang-tp-size", "2"], "--rollout-num-gpus-per-engine"),
])
def test_misplaced_or_reserved_sglang_flags_are_named(capsys, argv, named):
    assert named in error_of(capsys, *REQUIRED, *argv)


@pytest.mark.parametrize("argv, engines", [
    ((), 1),
    (("--rollout-num-engines", "3"), 3),  # a CPU run: the flag itself
    (("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "4", "--rollout-num-gpus-per-engine", "2"), 2),
    (("--actor-num-gpus-per-node", "4", "--colocate"), 4),  # one engine per trainer GPU
    (("--actor-num-gpus-per-node", "4", "--colocate", "--rollout-num-gpus-per-engine", "2"), 2),
])
def test_rollout_engine_count_follows_the_gpus_given_to_rollout(argv, engines):
    assert parse(*argv).num_rollout_engines == engines


SGLANG_GPUS = ("--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1")


@pytest.mark.parametrize("argv, mode", [
    ((), "tensor"),  # the local backend loads buckets from the object store
    ((*SGLANG_GPUS, "--rollout-num-gpus", "1"), "distributed"),  # engines on GPUs of their own
    ((*SGLANG_GPUS, "--colocate"), "tensor"),  # CUDA IPC on the shared GPU
    ((*SGLANG_GPUS, "--rollout-num-gpus", "1", "--rollout-quantization", "fp8", "--rollout-fp8-granularity", "channel"),
     "tensor"),  # only the IPC path reaches the channel-FP8 loader
    ((*SGLANG_GPUS, "--rollout-num-gpus", "1", "--update-weight-mode", "tensor"), "tensor"),
    ((*SGLANG_GPUS, "--colocate", "--update-weight-mode", "distributed", "--update-weight-group-backend", "gloo"),
     "distributed"),
])
def test_weight_update_mode_defaults_to_a_broadcast_for_engines_on_their_own_gpus(argv, mode):
    assert parse(*argv).weight_update_mode == mode


@pytest.mark.parametrize("argv, named", [
    (("--update-weight-mode", "distributed"), "--rollout-backend sglang"),
    ((*SGLANG_GPUS, "--rollout-num-gpus", "1", "--update-weight-mode", "distributed", "--rollout-quantization", "fp8",
      "--rollout-fp8-granularity", "channel"), "--update-weight-mode tensor"),
    ((*SGLANG_GPUS, "--colocate", "--update-weight-mode", "distributed"), "--update-weight-group-backend gloo"),
    ((*SGLANG_GPUS, "--colocate", "--update-weight-group-backend", "gloo"), "--update-weight-mode distributed"),
    ((*SGLANG_GPUS, "--colocate", "--check-weight-update-equal"),
     "--check-weight-update-equal is not supported by --rollout-backend sglang yet"),
])
def test_weight_update_modes_that_cannot_work_are_refused(capsys, argv, named):
    assert named in error_of(capsys, *REQUIRED, *argv)


def test_offload_train_is_on_for_a_colocated_sync_run_on_gpus_and_works_with_the_distributed_optimizer():
    gpus = ["--actor-num-gpus-per-node", "1", "--rollout-backend", "sglang", "--train-backend", "megatron", "--colocate"]
    cfg = parse(*gpus)
    assert cfg.cluster.offload_train and cfg.megatron.use_distributed_optimizer and cfg.megatron.bf16
    assert "--offload-train: on (the default on GPUs, as in slime; --no-offload-train turns it off)" in cfg.notes
    assert not parse(*gpus, "--no-offload-train").cluster.offload_train
    assert not parse(*gpus, "--async").cluster.offload_train  # both stay resident and run at once


def test_gpus_pick_the_production_backends_and_a_cpu_the_embedded_ones():
    assert (parse().backend.rollout_backend, parse().backend.train_backend) == ("local", "torch")
    gpus = parse("--actor-num-gpus-per-node", "2", "--colocate")
    assert (gpus.backend.rollout_backend, gpus.backend.train_backend) == ("sglang", "megatron")
    torch_on_gpus = parse("--actor-num-gpus-per-node", "2", "--colocate", "--train-backend", "torch", "--no-offload-train")
    assert torch_on_gpus.backend.train_backend == "torch" and not torch_on_gpus.megatron.bf16


def test_megatron_settings_slime_scripts_give_are_taken_with_megatrons_meaning():
    gpus = ["--actor-num-gpus-per-node", "2", "--colocate"]
    cfg = parse(*gpus, "--sequence-parallel")  # tensor-parallel size 1: Megatron-LM turns it off
    assert not cfg.megatron.sequence_parallel and any(n.startswith("--sequence-parallel: off") for n in cfg.notes)
    cfg = parse(*gpus, "--rollout-num-gpus", "4")
    assert cfg.cluster.rollout_num_gpus is None and cfg.num_rollout_engines == 2
    cfg = parse(*gpus, "--sglang-cuda-graph-bs", "1", "2", "4", "--sglang-mem-fraction-static", "0.5")
    assert cfg.sglang == {"cuda_graph_bs": [1, 2, 4], "mem_fraction_static": 0.5}


@pytest.mark.parametrize("argv", [[], ["--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1"],
                                  ["--actor-num-gpus-per-node", "1", "--colocate", "--async"]])
def test_offload_train_where_nothing_waits_for_the_memory_is_one_clear_line(capsys, argv):
    err = error_of(capsys, *REQUIRED, "--offload-train", *argv)
    assert "--offload-train" in err and "--colocate" in err
