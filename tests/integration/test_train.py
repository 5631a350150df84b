"""End-to-end runs of the synchronous loop on the embedded default (real Ray, local engine, torch trainer)."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from async_rl import train
from async_rl.config import parse_config
from tests.conftest import REPO, run_flags

STEP_KEYS = {"step", "rollout/reward_mean", "rollout/response_len_mean", "perf/step_time_s",
             "perf/rollout_time_s", "perf/train_time_s", "perf/update_weights_time_s", "train/loss", "train/grad_norm"}


def metrics_of(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_step_run_logs_every_step_evaluates_and_saves_its_config(tiny_model, tmp_path):
    out = tmp_path / "run"
    flags = run_flags(tiny_model, out, "--num-rollout", "2")
    train.main(flags)
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows[:2]:
        assert STEP_KEYS <= set(row), STEP_KEYS - set(row)
        assert row["rollout/samples"] == 16
    assert all("eval/reward_mean" in r and "eval/arithmetic/reward_mean" in r for r in rows)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.num_rollout == 2 and saved.rollout_batch_size == 4
    assert parse_config(["--config", str(out / "config.yaml")])[0] == parse_config(flags)[0]


def test_the_default_path_trains_saves_and_resumes_without_the_invariant_checks(tiny_model, tmp_path):
    """What users run: no --check-invariants (every other end-to-end test has them on)."""
    ckpt = tmp_path / "ckpt"
    train.main(run_flags(tiny_model, tmp_path / "run", "--num-rollout", "2", "--save", str(ckpt), evaluate=False,
                         check_invariants=False))
    train.main(run_flags(tiny_model, tmp_path / "run", "--num-rollout", "3", "--load", str(ckpt), "--save", str(ckpt),
                         evaluate=False, check_invariants=False))
    rows = metrics_of(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["train/loss"]) and r["rollout/samples"] == 16 for r in rows)
    assert (ckpt / "latest").read_text() == "step_000003"
    for first in (rows[0], rows[2]):  # each start's split comes with its first step, and only there
        laps = [first[f"perf/startup_{name}_s"] for name in ("checks", "data", "ray", "trainer", "engines", "first_weights")]
        assert min(laps) >= 0 and sum(laps) == pytest.approx(first["perf/startup_s"], rel=1e-6)
    assert "perf/startup_s" not in rows[1]


def test_checkpoint_then_resume_continues_from_the_saved_step(tiny_model, tmp_path):
    ckpt = tmp_path / "ckpt"
    train.main(run_flags(tiny_model, tmp_path / "first", "--num-rollout", "2", "--save", str(ckpt), "--save-interval", "1"))
    assert (ckpt / "latest").read_text() == "step_000002"
    assert (ckpt / "step_000001" / "model" / "model.safetensors").is_file()
    assert not list(ckpt.glob(".*.tmp"))
    state = json.loads((ckpt / "step_000002" / "driver_state.json").read_text())
    assert state == {"step": 2, "dataset": {"epoch": 0, "offset": 8}}

    train.main(run_flags(tiny_model, tmp_path / "resumed", "--num-rollout", "3", "--load", str(ckpt)))
    assert [r["step"] for r in metrics_of(tmp_path / "resumed")] == [2, 3]


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "async_rl.train", *argv], capture_output=True, text=True, cwd=REPO)


def test_missing_prompt_file_is_one_line_and_exit_code_2(tiny_model, tmp_path):
    flags = run_flags(tiny_model, tmp_path / "run", "--prompt-data", str(tmp_path / "missing.jsonl"))
    result = run_cli(*flags)
    assert result.returncode == 2
    assert "missing.jsonl: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_is_one_line_and_exit_code_2(tiny_model, tmp_path):
    """Where --save holds an earlier run's checkpoints, a --load that holds none is a mistake, not a first launch."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("step_2")
    result = run_cli(*run_flags(tiny_model, tmp_path / "run", "--load", str(tmp_path / "nowhere"), "--save",
                                str(tmp_path / "ckpt")))
    assert result.returncode == 2
    assert "--load: no checkpoint at" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend, message", [
    (["--train-backend", "megatron", "--bf16", "--fp8-format", "e4m3"],
     "--fp8-format runs Transformer Engine's layers, which need GPUs"),
    (["--train-backend", "megatron", "--recompute-granularity", "full"], "--recompute-granularity needs GPUs"),
    (["--train-backend", "megatron", "--bf16"], "--bf16 with --train-backend megatron needs GPUs"),
    pytest.param(["--rollout-backend", "sglang", "--actor-num-gpus-per-node", "1"], "--rollout-backend sglang needs SGLang",
                 marks=pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="sglang is installed")),
])
def test_a_backend_that_cannot_run_here_is_one_line_and_exit_code_2(tiny_model, tmp_path, backend, message):
    result = run_cli(*run_flags(tiny_model, tmp_path / "run", *backend))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_reward_plugin_that_raises_and_hangs_does_not_stop_the_run(tiny_model, tmp_path):
    out = tmp_path / "run"
    train.main(run_flags(tiny_model, out, "--num-rollout", "2", "--reward-timeout", "1",
                         "--custom-rm-path", "tests.plugins.reward_plugins:flaky", evaluate=False))
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == [0, 1]
    assert sum(r["reward/errors"] for r in rows) > 0 and sum(r["reward/timeouts"] for r in rows) > 0
    assert all(r["rollout/samples"] == 16 for r in rows)


def test_the_example_plugin_loads_through_the_flag_and_logs_its_extra_field(tiny_model, tmp_path):
    out = tmp_path / "run"
    train.main(run_flags(tiny_model, out, "--num-rollout", "1",
                         "--custom-rm-path", "rewards.example_plugin:boxed_answer_with_format", evaluate=False))
    (row,) = metrics_of(out)
    assert 0.0 <= row["rollout/reward_format_ok_mean"] <= 1.0 and row["reward/errors"] == 0


@pytest.mark.parametrize("granularity", ["block", "channel"])
def test_fp8_rollout_with_tis_trains_and_logs_the_mismatch(tiny_model, tmp_path, granularity):
    out = tmp_path / "run"
    train.main(run_flags(tiny_model, out, "--num-rollout", "2", "--rollout-quantization", "fp8",
                         "--rollout-fp8-granularity", granularity, "--update-weight-buffer-size", "65536", evaluate=False))
    rows = metrics_of(out)
    assert all(r["train/rollout_logprob_abs_diff"] > 1e-4 and "train/tis_weight_mean" in r for r in rows)


def test_colocated_engines_release_memory_for_each_train_step_and_generate_again_after(tiny_model, tmp_path):
    """A paused engine refuses to generate, so a second step only runs if the loop resumed it before the push."""
    out = tmp_path / "run"
    train.main(run_flags(tiny_model, out, "--num-rollout", "2", "--colocate", evaluate=False))
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == [0, 1]
    assert all(r["perf/release_memory_time_s"] > 0 and r["perf/resume_memory_time_s"] > 0 for r in rows)  # both ran


def test_sync_resume_is_exact(tiny_model, tmp_path):
    """Four steps in one run, and two + resume + two, give bit-identical weights and identical metrics."""
    import torch
    from safetensors.torch import load_file

    flags = ["--rollout-shuffle", "--eval-interval", "2"]
    train.main(run_flags(tiny_model, tmp_path / "straight", "--num-rollout", "4", "--save", str(tmp_path / "a"), *flags))
    train.main(run_flags(tiny_model, tmp_path / "first", "--num-rollout", "2", "--save", str(tmp_path / "b"), *flags))
    train.main(run_flags(tiny_model, tmp_path / "resumed", "--num-rollout", "4", "--load", str(tmp_path / "b"),
                         "--save", str(tmp_path / "b"), *flags))
    straight = load_file(tmp_path / "a" / "step_000004" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "b" / "step_000004" / "model" / "model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)

    def comparable(rows):
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    first = metrics_of(tmp_path / "first")
    assert first[-1]["step"] == 2 and "rollout/reward_mean" not in first[-1]  # the first run's closing eval
    assert comparable(metrics_of(tmp_path / "straight")) == comparable(first[:-1] + metrics_of(tmp_path / "resumed"))


def test_non_finite_steps_are_skipped_counted_and_bounded(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*run_flags(tiny_model, out, "--num-rollout", "3", "--max-skipped-steps", "1",
                                "--custom-rm-path", "tests.plugins.reward_plugins:not_a_number", evaluate=False))
    assert result.returncode == 1
    assert "2 optimizer steps skipped for a NaN/inf loss or gradient, more than --max-skipped-steps 1" in result.stderr
    assert "Traceback" not in result.stderr
    (row,) = metrics_of(out)
    assert row["train/skipped_steps"] == 1


def test_every_fp8_push_is_checked_equal_to_what_the_trainer_sent(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*run_flags(tiny_model, out, "--num-rollout", "2", "--rollout-quantization", "fp8", "--use-tis",
                                "--check-weight-update-equal", evaluate=False))
    assert result.returncode == 0, result.stderr
    assert len(metrics_of(out)) == 2


def test_the_mismatch_alert_stops_a_run_whose_fp8_rollout_drifts_past_its_bound(tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_cli(*run_flags(tiny_model, out, "--num-rollout", "3", "--rollout-quantization", "fp8", "--use-tis",
                                "--mismatch-alert-k3", "0", "--mismatch-alert-steps", "2",
                                "--mismatch-alert-action", "stop", evaluate=False))
    assert result.returncode == 1
    assert "mismatch/kl_k3 above --mismatch-alert-k3 0 for 2 steps in a row" in result.stderr
    assert "Traceback" not in result.stderr
    (row,) = metrics_of(out)  # the first step is logged; the second raises the alert
    assert row["mismatch/kl_k3"] > 0 and 0 < row["mismatch/ess_frac"] < 1


def start_long_run(tiny_model, tmp_path, *extra):
    """A 500-step run in its own process group, returned once its first step is in metrics.jsonl."""
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "async_rl.train", *extra,
           *run_flags(tiny_model, out, "--num-rollout", "500", "--save", str(tmp_path / "ckpt"), evaluate=False)]
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"no step logged: {process.communicate()[1][-3000:]}")
        time.sleep(0.5)
    return process, out


@pytest.mark.parametrize("signal_name, loop, signals, reader", [
    ("SIGTERM", "sync", 1, "kept"), ("SIGINT", "async", 1, "kept"), ("SIGINT", "sync", 2, "gone"),
])
def test_a_stop_signal_ends_after_the_step_saves_and_says_where(tiny_model, tmp_path, signal_name, loop, signals, reader):
    """SIGTERM (plain `timeout`, a scheduler) or Ctrl-C (a terminal), each sent to every process of the run's group:
    the run finishes its step, saves, and says so in one line; no worker dies of it or prints a traceback. Ctrl-C
    pressed twice under `| tee` (which dies of the first, so stdout has no reader) still saves, and the line that
    stdout can no longer carry comes on stderr."""
    import os
    import signal
    import time

    signum = getattr(signal, signal_name)
    process, out = start_long_run(tiny_model, tmp_path, *(["--async"] if loop == "async" else []))
    try:
        if reader == "gone":
            process.stdout.close()
        for _ in range(signals):
            os.killpg(process.pid, signum)
            time.sleep(0.2)
        stdout = process.stdout.read() if reader == "kept" else ""
        stderr = process.stderr.read()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signum, stderr
    steps = [r["step"] for r in metrics_of(out)]
    assert len(steps) < 500
    ckpt = tmp_path / "ckpt"
    saved = ckpt / f"step_{steps[-1] + 1:06d}"
    assert (ckpt / "latest").read_text() == saved.name and (saved / "model" / "model.safetensors").is_file()
    line = f"stopped by {signal_name} after step {steps[-1]}: checkpoint saved at {saved} (resume with --load {ckpt})"
    assert line in (stdout if reader == "kept" else stderr)
    if signals == 2:
        assert "still stopping after this step, and saving it" in stderr
    for noise in ("Traceback", "KeyboardInterrupt", "BrokenProcessPool", "BrokenPipeError"):
        assert noise not in stderr, stderr[-3000:]


def test_a_driver_killed_outright_leaves_no_process_behind(tiny_model, tmp_path):
    """kill -9 (what the out-of-memory killer does): reward workers, the resource tracker and the local Ray the
    driver started all end within 30 s."""
    import signal
    import time

    import psutil

    process, _ = start_long_run(tiny_model, tmp_path)
    driver = psutil.Process(process.pid)
    left = [p for p in driver.children(recursive=True) if "async_rl.orphan_reaper" not in " ".join(p.cmdline())]
    assert len(left) >= 3, [p.cmdline() for p in left]  # two reward workers and Ray at least
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(1)
    assert not left, [(p.pid, p.cmdline()[:3]) for p in left]


@pytest.mark.parametrize("estimator", ["gspo", "cispo"])
def test_gspo_and_cispo_train_through_the_flag(tiny_model, tmp_path, estimator):
    out = tmp_path / "run"
    train.main(run_flags(tiny_model, out, "--num-rollout", "2", "--advantage-estimator", estimator,
                         "--loss-aggregation", "seq_mean_token_mean", "--check-invariants", evaluate=False))
    rows = metrics_of(out)
    assert [r["step"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["train/loss"]) and r["train/skipped_steps"] == 0 for r in rows)
    assert rows[0]["train/first_step_ratio_max_abs_dev"] < 1e-5  # the first step is on-policy for either loss


def test_saved_rollout_data_replays_the_run_exactly_without_generating(tiny_model, tmp_path):
    """--save-debug-rollout-data then --load-debug-rollout-data: the same batches train the same steps, bit for bit."""
    from safetensors.torch import load_file

    data = str(tmp_path / "debug" / "rollout_{rollout_id}.jsonl")  # slime's template form
    train.main(run_flags(tiny_model, tmp_path / "a", "--num-rollout", "2", "--save-debug-rollout-data", data,
                         "--save", str(tmp_path / "ckpt_a"), evaluate=False))
    saved = (tmp_path / "debug" / "rollout_1.jsonl").read_text().splitlines()
    assert len(saved) == metrics_of(tmp_path / "a")[1]["rollout/samples"]
    assert {"response_tokens", "rollout_log_probs", "reward", "weight_version"} <= set(json.loads(saved[0]))
    # another seed: generating would sample other responses, so only the replay can match run a
    train.main(run_flags(tiny_model, tmp_path / "b", "--num-rollout", "2", "--load-debug-rollout-data", data,
                         "--save", str(tmp_path / "ckpt_b"), "--seed", "99", evaluate=False))
    for a, b in zip(metrics_of(tmp_path / "a"), metrics_of(tmp_path / "b")):
        for key in ("train/loss", "train/grad_norm", "train/rollout_logprob_abs_diff", "rollout/reward_mean"):
            assert a[key] == b[key], key
    weights_a = load_file(tmp_path / "ckpt_a" / "step_000002" / "model" / "model.safetensors")
    weights_b = load_file(tmp_path / "ckpt_b" / "step_000002" / "model" / "model.safetensors")
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)


def test_an_output_dir_that_holds_a_run_is_refused_unless_resumed_or_overwritten(tiny_model, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    train.main(run_flags(tiny_model, out, "--num-rollout", "2", "--save", str(ckpt), evaluate=False))
    again = run_cli(*run_flags(tiny_model, out, "--num-rollout", "1", evaluate=False))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"--output-dir {out} holds an earlier run: resume it with --load {ckpt}, choose another" in again.stderr
    assert [r["step"] for r in metrics_of(out)] == [0, 1]  # untouched
    train.main(run_flags(tiny_model, out, "--num-rollout", "1", "--overwrite-output-dir", evaluate=False))
    assert [r["step"] for r in metrics_of(out)] == [0]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_use_wandb_without_the_package_is_one_line_and_exit_code_2(tiny_model, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here; this test checks the message shown when it is not")
    result = run_cli(*run_flags(tiny_model, tmp_path / "run", "--use-wandb"))
    assert result.returncode == 2 and "--use-wandb needs the wandb package" in result.stderr
    assert "Traceback" not in result.stderr
