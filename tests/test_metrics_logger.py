"""metrics.jsonl and TensorBoard across a crash and a resume: every step once."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from async_rl.metrics_logger import MetricsLogger


def steps_in(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_drops_what_the_crashed_run_logged_after_its_checkpoint(tmp_path):
    crashed = MetricsLogger(str(tmp_path))
    for step in range(5):  # checkpoint after step 2 (3 steps done), crash after logging step 4
        crashed.log(step, {"rollout/reward_mean": float(step)})
    crashed.close()

    resumed = MetricsLogger(str(tmp_path), resume_step=3)
    for step in range(3, 6):
        resumed.log(step, {"rollout/reward_mean": 10.0 + step})
    resumed.close()

    assert steps_in(tmp_path) == [0, 1, 2, 3, 4, 5]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("rollout/reward_mean")]
    assert points == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]


def test_an_earlier_run_without_a_checkpoint_is_refused_with_the_way_on(tiny_model, tmp_path):
    from async_rl.config import parse_config
    from async_rl.startup_checks import startup_problems

    out = tmp_path / "run"
    MetricsLogger(str(out)).close()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    cfg, _ = parse_config(["--hf-checkpoint", str(tiny_model), "--prompt-data", str(tiny_model / "data" / "train.jsonl"),
                           "--output-dir", str(out)])
    assert startup_problems(cfg) == [
        f"--output-dir {out} holds an earlier run: it saved no checkpoint to resume: choose another --output-dir, "
        f"or pass --overwrite-output-dir to start afresh there"]


def test_carried_metrics_come_with_the_next_step_only(tmp_path):
    logger = MetricsLogger(str(tmp_path))
    logger.carry({"perf/startup_s": 12.0})
    logger.log(0, {"train/loss": 1.0})
    logger.log(1, {"train/loss": 0.5})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "perf/startup_s": 12.0, "train/loss": 1.0}, {"step": 1, "train/loss": 0.5}]
