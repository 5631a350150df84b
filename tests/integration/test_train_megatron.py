"""`train.py --train-backend megatron` end to end on a CPU: trains, checkpoints in torch_dist, resumes exactly."""

import json

import pytest

from async_rl import train
from tests.conftest import run_flags
from tests.integration.test_train import metrics_of

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test]')")


def test_megatron_run_checkpoints_and_resumes_with_the_probe_invariant(tiny_model, tmp_path, capsys):
    """--check-invariants: the first step's PPO ratio is 1 and trainer log-probs equal the engine's; after
    --load, the probe batch's loss and gradient norm equal those recorded at save time (weights and
    optimizer came back from torch_dist and the per-rank state), under the saving layout and on one rank."""
    ckpt = tmp_path / "ckpt"
    megatron = ["--train-backend", "megatron", "--tensor-model-parallel-size"]
    train.main(run_flags(tiny_model, tmp_path / "first", "--num-rollout", "2", "--save", str(ckpt),
                         "--save-interval", "1", *megatron, "2", evaluate=False))
    step = ckpt / "step_000002"
    assert (step / "megatron" / "metadata.json").is_file()
    assert sorted(p.name for p in (step / "trainer_state").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    rows = metrics_of(tmp_path / "first")
    assert [r["step"] for r in rows] == [0, 1] and all(r["train/skipped_steps"] == 0 for r in rows)
    assert json.loads((step / "probe.json").read_text())["result"]["grad_norm"] > 0

    for tp in ("2", "1"):
        capsys.readouterr()
        out = tmp_path / f"resumed_tp{tp}"
        train.main(run_flags(tiny_model, out, "--num-rollout", "3", "--load", str(ckpt), *megatron, tp, evaluate=False))
        assert "invariant holds after --load" in capsys.readouterr().out, f"resumed at TP={tp}"
        assert [r["step"] for r in metrics_of(out)] == [2]
