"""Checkpoint directories that are either complete or absent: written under a temporary name, then renamed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from async_rl.errors import UserInputError

LATEST = "latest"
DRIVER_STATE = "driver_state.json"


class CheckpointError(UserInputError):
    """A checkpoint that is missing or incomplete; the message names the path."""


def save_checkpoint(root: str, step: int, driver_state: dict[str, Any], write_trainer: Callable[[str], None]) -> Path:
    """Write `root/step_XXXXXX` atomically and point `root/latest` at it.

    A crash mid-write leaves only a `.tmp` directory behind; the previous checkpoint and `latest` stay intact.
    """
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"step_{step:06d}"
    staging = base / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_trainer(str(staging))
    (staging / DRIVER_STATE).write_text(json.dumps(driver_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    pointer = base / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, base / LATEST)
    return final


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint directory from `--load`: a step directory, or a root whose `latest` names one."""
    p = Path(path)
    if (p / LATEST).is_file():
        p = p / (p / LATEST).read_text().strip()
    if not p.is_dir():
        raise CheckpointError(f"--load: no checkpoint at {path}")
    if not (p / DRIVER_STATE).is_file():
        raise CheckpointError(f"--load: {p} is incomplete (no {DRIVER_STATE})")
    return p


def read_driver_state(checkpoint_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint_dir / DRIVER_STATE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--load: {checkpoint_dir / DRIVER_STATE} is corrupt ({e.msg})") from None
