"""`train.py --train-backend megatron` end to end on a CPU: trains, checkpoints in torch_dist, resumes exactly."""

import json

import pytest

from async_rl import train
from tests.conftest import run_flags
from tests.test_train import metrics_of

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test]')")


@pytest.mark.parametrize("resume_tp", [2, 1], ids=["same-layout", "tp2-to-tp1"])
def test_megatron_run_checkpoints_and_resumes_with_the_probe_invariant(tiny_model, tmp_path, resume_tp, capsys):
    """--check-invariants: the first step's PPO ratio is 1 and trainer log-probs equal the engine's; after
    --load, the probe batch's loss and gradient norm equal those recorded at save time (weights and
    optimizer came back from torch_dist and the per-rank state), also when the run resumes on one rank."""
    ckpt = tmp_path / "ckpt"
    megatron = ["--train-backend", "megatron", "--tensor-model-parallel-size", "2"]
    train.main(run_flags(tiny_model, tmp_path / "first", "--num-rollout", "2", "--save", str(ckpt),
                         "--save-interval", "1", *megatron, evaluate=False))
    step = ckpt / "step_000002"
    assert (step / "megatron" / "metadata.json").is_file()
    assert sorted(p.name for p in (step / "trainer_state").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    rows = metrics_of(tmp_path / "first")
    assert [r["step"] for r in rows] == [0, 1] and all(r["train/skipped_steps"] == 0 for r in rows)

    capsys.readouterr()
    resumed = ["--train-backend", "megatron", "--tensor-model-parallel-size", str(resume_tp)]
    train.main(run_flags(tiny_model, tmp_path / "resumed", "--num-rollout", "3", "--load", str(ckpt), *resumed,
                         evaluate=False))
    assert "invariant holds after --load" in capsys.readouterr().out
    assert [r["step"] for r in metrics_of(tmp_path / "resumed")] == [2]
    assert json.loads((step / "probe.json").read_text())["result"]["grad_norm"] > 0
