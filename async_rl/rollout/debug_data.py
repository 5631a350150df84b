"""Rollout data on disk, to debug a step: every trained batch saved (`--save-debug-rollout-data`), or trained from
the saved files instead of generating (`--load-debug-rollout-data`), as slime does.

PATH is a file template holding `{rollout_id}` (slime's form, e.g. `dbg/rollout_{rollout_id}.jsonl`) or a
directory (`PATH/rollout_000007.jsonl`). A file holds one JSON line per sample: prompt and response tokens,
rollout log-probs, loss mask, reward, the weight version that generated it, status and metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from async_rl.errors import UserInputError
from async_rl.rollout.producer import sample_from_dict, sample_to_dict
from async_rl.sample import Sample


def debug_data_file(path: str, step: int) -> Path:
    return Path(path.format(rollout_id=step)) if "{rollout_id}" in path else Path(path) / f"rollout_{step:06d}.jsonl"


def save_rollout(path: str, step: int, samples: list[Sample]) -> None:
    """Written under a temporary name, then renamed: a crash leaves no half file."""
    target = debug_data_file(path, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    staging.write_text("".join(json.dumps(sample_to_dict(s)) + "\n" for s in samples))
    os.replace(staging, target)


def load_rollout(path: str, step: int) -> list[Sample]:
    source = debug_data_file(path, step)
    if not source.is_file():
        raise UserInputError(f"--load-debug-rollout-data: no rollout data for step {step} ({source})")
    samples = []
    for number, line in enumerate(source.read_text().splitlines(), 1):
        try:
            samples.append(sample_from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise UserInputError(f"--load-debug-rollout-data: {source}:{number}: not a saved sample ({e})") from None
    return samples
