"""Shared fixtures: a tiny model built by the repo's own tool, and small real datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped elsewhere, run on a GPU machine")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The embedded default's model, built and SFT-warmed by the repo's own tool."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tiny_model.py"), "--output-dir", str(out)],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def run_flags(tiny_model: Path, output_dir: Path, *extra: str, evaluate: bool = True) -> list[str]:
    """Flags for a small, fast run of the embedded default (without `--config`, so eval can be left out).

    `--check-invariants` is on: every test run also checks first-step log-probs and resume probes.
    """
    eval_flags = ["--eval-prompt-data", "arithmetic", str(tiny_model / "data" / "eval.jsonl"), "--eval-interval", "1",
                  "--n-samples-per-eval-prompt", "2", "--eval-max-response-len", "32"]
    return [
        "--hf-checkpoint", str(tiny_model),
        "--prompt-data", str(tiny_model / "data" / "train.jsonl"),
        "--output-dir", str(output_dir),
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--micro-batch-size", "8",
        "--rollout-max-response-len", "32", "--lr", "3e-4", "--use-tis", "--torch-num-threads", "1", "--check-invariants",
        *(eval_flags if evaluate else []),
        *extra,
    ]
