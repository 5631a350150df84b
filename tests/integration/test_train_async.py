"""The asynchronous loop: staleness bounded by admission control, partial rollouts, resume, a killed engine."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import ray

from async_rl import train_async
from async_rl.checkpoint import ROLLOUT_BUFFER
from async_rl.config import parse_config
from async_rl.sample import SampleStatus
from async_rl.session import TrainingSession
from tests.conftest import run_flags


def step_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "perf/step_time_s" in r]


def test_async_run_trains_on_one_version_old_samples(tiny_model, tmp_path):
    out = tmp_path / "run"
    train_async.main(run_flags(tiny_model, out, "--num-rollout", "3"))
    steps = step_rows(out)
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert [r["rollout/staleness_max"] for r in steps] == [0.0, 1.0, 1.0]
    assert all(r["rollout/stale_dropped"] == 0 and "train/loss" in r for r in steps)
    assert any(r["perf/overlap_ratio"] > 0 for r in steps[1:])  # later batches were generated while training
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "eval/reward_mean" in last and last["step"] == 3


def test_admission_control_bounds_staleness_and_the_buffer(tiny_model, tmp_path):
    out = tmp_path / "run"
    train_async.main(run_flags(tiny_model, out, "--num-rollout", "5", "--max-staleness", "2", evaluate=False))
    steps = step_rows(out)
    assert len(steps) == 5 and all(r["rollout/samples"] == 16 for r in steps)
    assert max(r["rollout/staleness_max"] for r in steps) <= 2
    assert sum(r["rollout/stale_dropped"] for r in steps) == 0  # the bound held by construction
    # after taking a batch, what is buffered or generating is at most max_staleness batches (4 groups each)
    assert all(r["rollout/buffer_groups"] + r["rollout/running_groups"] <= 2 * 4 for r in steps)


def test_partial_rollout_continues_interrupted_samples_after_the_push(tiny_model, tmp_path):
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--async", "--partial-rollout",
                                    "--rollout-max-response-len", "64", evaluate=False))
    with TrainingSession(cfg) as session:
        producer = session.start_producer()
        try:
            while not producer.snapshot()["retry_prompts"]:  # wait until generation is running
                time.sleep(0.01)
            producer.abort_in_flight()
            ray.get(session.push_weights(version=1))
            producer.set_version(1)
            samples, metrics = producer.take_batch(4)
        finally:
            producer.stop()
        recomputed = ray.get(session.trainer.compute_log_probs.remote(samples))
    assert metrics["rollout/partial_aborted_samples"] > 0
    assert len(samples) == 16 and len({s.group_id for s in samples}) == 4  # nothing lost, nothing twice
    for s, lp in zip(samples, recomputed):
        # a sample keeps the version of its first token: 0, or 1 if it was stopped before starting
        assert s.status in (SampleStatus.COMPLETED, SampleStatus.TRUNCATED) and s.weight_version in (0, 1)
        assert len(s.rollout_log_probs) == len(s.loss_mask) == s.response_length == len(lp)
        # weights 1 equal weights 0 here (no training), so the kept tokens and the continuation both agree
        assert max(abs(a - b) for a, b in zip(lp, s.rollout_log_probs)) < 1e-3


def test_groups_dropped_as_too_stale_give_their_place_back_so_the_batch_still_fills(tiny_model, tmp_path):
    """Partial rollouts continued across two pushes come back older than --max-staleness and are dropped. More
    than max_staleness batches of such drops used to shrink the admission budget below one batch for good, and
    the next take_batch waited forever (a GPU learning run stalled this way at its sixth step)."""
    cfg, _ = parse_config(run_flags(tiny_model, tmp_path / "run", "--async", evaluate=False))
    with TrainingSession(cfg) as session:
        producer = session.start_producer()
        result: dict = {}
        try:
            deadline = time.time() + 120
            while producer.accepted < 8 or producer.snapshot()["retry_prompts"]:  # the budget at version 0: 2 batches
                assert time.time() < deadline, "the buffer never filled"
                time.sleep(0.01)
            for group in producer.snapshot()["buffer"]:
                assert all(s["weight_version"] == 0 for s in group)
            for group in list(producer.buffer):  # the fault: all 8 buffered groups are two versions too old
                for s in group.samples:
                    s.weight_version = -2
            taker = threading.Thread(target=lambda: result.update(zip(("samples", "metrics"), producer.take_batch(4))),
                                     daemon=True)
            taker.start()
            taker.join(timeout=120)
        finally:
            producer.stop()
    assert not taker.is_alive(), "take_batch is still waiting: the dropped groups kept their admission budget"
    assert result["metrics"]["rollout/stale_dropped"] == 8 * 4
    assert len(result["samples"]) == 16 and {s.weight_version for s in result["samples"]} == {0}


def test_async_checkpoint_keeps_the_buffer_and_resume_keeps_the_bound(tiny_model, tmp_path, capsys):
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    common = ("--max-staleness", "2", "--save", str(ckpt), "--save-interval", "2")
    train_async.main(run_flags(tiny_model, out, "--num-rollout", "2", *common, evaluate=False))
    saved = json.loads((ckpt / "step_000002" / ROLLOUT_BUFFER).read_text())
    driver = json.loads((ckpt / "step_000002" / "driver_state.json").read_text())
    # every prompt taken from the dataset is trained, buffered or saved to generate again: none lost
    assert driver["dataset"]["offset"] == 2 * 4 + len(saved["buffer"]) + len(saved["retry_prompts"])
    assert saved["buffer"] or saved["retry_prompts"]
    buffered_ids = {d["group_id"] for g in saved["buffer"] for d in g}

    train_async.main(run_flags(tiny_model, out, "--num-rollout", "4", *common, "--load", str(ckpt), evaluate=False))
    assert "invariant holds after --load" in capsys.readouterr().out
    steps = step_rows(out)
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert all(r["rollout/staleness_max"] <= 2 and r["rollout/stale_dropped"] == 0 for r in steps[2:])
    assert all(r["rollout/samples"] == 16 for r in steps)
    assert len(buffered_ids) == len(saved["buffer"])


def engine_pids() -> list[int]:
    """Rollout engines are Ray actors whose process title names their class, as an operator sees it in ps; only
    this process's own (its Ray's workers descend from it), so that tests running side by side keep theirs."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith("ray::LocalEngine"):
                pids.append(child.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return pids


def test_engine_killed_during_an_async_run_is_restarted_and_every_step_trains_a_full_batch(tiny_model, tmp_path):
    out = tmp_path / "run"
    killed: list[int] = []

    def kill_after_first_step():
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.05)
        while time.time() < deadline and not step_rows(out):
            time.sleep(0.05)
        for pid in engine_pids():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_after_first_step)
    killer.start()
    train_async.main(run_flags(tiny_model, out, "--num-rollout", "5", "--rollout-max-response-len", "48",
                               "--max-staleness", "2", evaluate=False))
    killer.join()
    steps = step_rows(out)
    assert killed and len(steps) == 5
    assert all(r["rollout/samples"] == 16 and r["rollout/groups_kept"] == 4 for r in steps)
    assert sum(r["rollout/engine_restarts"] for r in steps) == len(killed)


def test_with_a_dynamic_sampling_filter_batches_stay_full_and_within_the_bound(tiny_model, tmp_path):
    """Admission counts running groups at the filter's keep rate; groups that pass beyond the expected share
    must not leave a batch short or train older than --max-staleness."""
    out = tmp_path / "run"
    train_async.main(run_flags(tiny_model, out, "--num-rollout", "4", "--dynamic-sampling-filter-path",
                               "async_rl.rollout.filters:check_reward_nonzero_std", "--over-sampling-batch-size", "8",
                               evaluate=False))
    steps = step_rows(out)
    assert len(steps) == 4 and all(r["rollout/samples"] == 16 for r in steps)
    assert all(r["rollout/staleness_max"] <= 1 for r in steps)
    assert all(0 < r["rollout/admission_keep_rate"] <= 1 for r in steps)
    assert sum(r["rollout/groups_generated"] for r in steps) > sum(r["rollout/groups_kept"] for r in steps)
