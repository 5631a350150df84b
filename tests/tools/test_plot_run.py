import json
import subprocess
import sys

from tests.conftest import REPO


def test_a_step_that_goes_backwards_is_warned_about(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "rollout/reward_mean": 0.1 * s}) + "\n" for s in (0, 1, 2, 0, 1)))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "plot_run.py"), str(metrics), "-o",
                             str(tmp_path / "run.png")], capture_output=True, text=True, check=True)
    assert f"plot_run: warning: {metrics}:4: step 0 follows step 2" in result.stderr
