"""avg@k / pass@k, several eval sets at once, the standalone evaluator on a checkpoint, and run plots."""

import json
import subprocess
import sys
from math import comb

import pytest

from async_rl import evaluate, train
from async_rl.evaluation import pass_at_k, score_groups
from async_rl.sample import Sample
from tests.conftest import REPO, assert_drawn, run_flags


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(16, 0, 4) == 0.0 and pass_at_k(16, 16, 1) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 include a correct one


def test_score_groups_gives_avg_and_pass_at_powers_of_two_up_to_n():
    scores = {0: [1, 0, 0, 0], 1: [0, 0, 0, 0]}  # one prompt solved once in four, one never
    samples = [Sample(prompt="", prompt_tokens=[1], group_id=g, reward=float(r)) for g, rs in scores.items() for r in rs]
    metrics = score_groups("aime", samples, 4)
    assert metrics["eval/aime/avg@4"] == pytest.approx(1 / 8)
    assert metrics["eval/aime/pass@1"] == pytest.approx(1 / 8)
    assert metrics["eval/aime/pass@4"] == pytest.approx(1 / 2)
    assert set(metrics) == {"eval/aime/avg@4", "eval/aime/pass@1", "eval/aime/pass@2", "eval/aime/pass@4"}


def test_training_logs_every_eval_set_and_the_standalone_evaluator_scores_the_checkpoint(tiny_model, tmp_path, capsys):
    eval_set = str(tiny_model / "data" / "eval.jsonl")
    out, ckpt = tmp_path / "run", tmp_path / "ckpt"
    flags = run_flags(tiny_model, out, "--num-rollout", "1", "--save", str(ckpt), evaluate=False)
    train.main([*flags, "--eval-prompt-data", "sums", eval_set, "again", eval_set, "--n-samples-per-eval-prompt", "4",
                "--eval-max-response-len", "32"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for name in ("sums", "again"):
        assert all(0 <= rows[-1][f"eval/{name}/{m}"] <= 1 for m in ("avg@4", "pass@1", "pass@2", "pass@4"))
        assert rows[-1][f"eval/{name}/pass@1"] <= rows[-1][f"eval/{name}/pass@4"]

    capsys.readouterr()
    evaluate.main(["--load", str(ckpt), "--eval-prompt-data", "sums", eval_set, "--n-samples-per-eval-prompt", "4",
                   "--eval-max-response-len", "32", "--torch-num-threads", "1", "--output-dir", str(tmp_path / "eval")])
    table = capsys.readouterr().out
    assert "| sums |" in table and "pass@4" in table
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["model"].endswith("step_000001/model") and 0 <= result["eval/sums/avg@4"] <= 1


def test_the_evaluator_and_its_dry_run_report_what_a_training_start_reports(tiny_model, tmp_path):
    """`async_rl.evaluate` runs the start-up checks of a training start on the same flags; `--dry-run` runs them
    without evaluating."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "label": "2"}\nnot json\n')
    flags = ["--hf-checkpoint", str(tiny_model), "--eval-prompt-data", str(bad),
             "--output-dir", str(tmp_path / "eval")]
    for extra in ([], ["--dry-run"]):
        done = subprocess.run([sys.executable, "-m", "async_rl.evaluate", *flags, *extra], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert f"--eval-prompt-data {bad}:2: not valid JSON" in done.stderr
        assert not (tmp_path / "eval" / "eval.json").exists()
    ok = subprocess.run([sys.executable, "-m", "async_rl.evaluate", "--hf-checkpoint", str(tiny_model),
                         "--eval-prompt-data", str(tiny_model / "data" / "eval.jsonl"), "--dry-run",
                         "--output-dir", str(tmp_path / "eval")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "start-up checks passed" in ok.stdout, ok.stderr
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_plot_run_draws_the_reward_curve(tiny_model, tmp_path):
    out = tmp_path / "run"
    train.main(run_flags(tiny_model, out, "--num-rollout", "2"))
    png = tmp_path / "run.png"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "plot_run.py"), str(out / "metrics.jsonl"), "-o", str(png)],
                            capture_output=True, text=True, check=True)
    assert_drawn(png)
    assert "rollout/reward_mean" in result.stderr and "eval/reward_mean" in result.stderr
