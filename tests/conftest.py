"""Shared fixtures: a tiny model built by the repo's own tool, and small real datasets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/integration/ (whole runs, Ray, launched processes) carry the `integration` marker, so that
    `pytest -m "not integration"` runs the unit tests alone."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
FIXTURES = Path(__file__).parent / "fixtures"


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


@pytest.fixture(scope="session")
def tiny_moe_model(tmp_path_factory, tiny_model) -> Path:
    """A tiny random Qwen3-MoE (4 experts, top 2, untied output layer) with the embedded model's tokenizer;
    transformers saves it in the per-expert checkpoint layout."""
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    out = tmp_path_factory.mktemp("qwen3_moe")
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=262, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)
    Qwen3MoeForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def run_flags(tiny_model: Path, output_dir: Path, *extra: str, evaluate: bool = True,
              check_invariants: bool = True) -> list[str]:
    """Flags for a small, fast run of the embedded default (without `--config`, so eval can be left out).

    `--check-invariants` is on unless asked otherwise: test runs also check first-step log-probs and resume probes.
    """
    eval_flags = ["--eval-prompt-data", "arithmetic", str(tiny_model / "data" / "eval.jsonl"), "--eval-interval", "1",
                  "--n-samples-per-eval-prompt", "2", "--eval-max-response-len", "32"]
    return [
        "--hf-checkpoint", str(tiny_model),
        "--prompt-data", str(tiny_model / "data" / "train.jsonl"),
        "--output-dir", str(output_dir),
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--micro-batch-size", "8",
        "--rollout-max-response-len", "32", "--lr", "3e-4", "--use-tis", "--torch-num-threads", "1",
        *(["--check-invariants"] if check_invariants else []),
        *(eval_flags if evaluate else []),
        *extra,
    ]


def assert_drawn(png: Path) -> None:
    """A PNG that decodes to a figure with something on it (not a blank canvas)."""
    from matplotlib.image import imread

    image = imread(png)
    assert image.ndim == 3 and min(image.shape[:2]) > 200, image.shape
    assert image[..., :3].std() > 0.05
