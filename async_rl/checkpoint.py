"""The checkpoint layout, and directories that are either complete or absent (written under a temporary name,
then renamed).

    <--save>/latest                 the name of the newest step directory
    <--save>/step_000010/
        driver_state.json           the driver: steps done, the dataset's position
        engine_rng.pt               each engine's sampling RNG state
        rollout_buffer.json         async runs: buffered groups and the prompts still generating
        probe.json                  --check-invariants: a batch and its loss and grad norm at the saved weights
        ...                         the train backend's part (`save` of its trainer; `hf_model` finds the
                                    Hugging Face model in it)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from async_rl.errors import UserInputError

LATEST = "latest"
DRIVER_STATE = "driver_state.json"
ENGINE_RNG = "engine_rng.pt"
ROLLOUT_BUFFER = "rollout_buffer.json"
PROBE = "probe.json"


class CheckpointError(UserInputError):
    """A checkpoint that is missing or incomplete; the message names the path."""


@dataclass
class DriverParts:
    """What the driver writes beside the trainer's part."""

    state: dict[str, Any]  # {"step": steps done, "dataset": its position}
    engine_rng: list[Any]  # None for an engine that had just died
    rollout_buffer: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None


def save_checkpoint(root: str, step: int, parts: DriverParts, write_trainer: Callable[[str], None]) -> Path:
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
    torch.save(parts.engine_rng, staging / ENGINE_RNG)
    for name, content in ((ROLLOUT_BUFFER, parts.rollout_buffer), (PROBE, parts.probe)):
        if content is not None:
            (staging / name).write_text(json.dumps(content))
    (staging / DRIVER_STATE).write_text(json.dumps(parts.state, indent=2))
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


def _holds_checkpoint(path: Path) -> bool:
    return (path / LATEST).is_file() or (path / DRIVER_STATE).is_file()


def is_first_launch(load: str, save: str | None) -> bool:
    """slime's first launch: --load names where checkpoints will be (often the --save directory) before there are
    any. A --load that is missing, empty, or the --save directory, holding no checkpoint while --save holds none
    either, starts afresh. Any other --load must hold a checkpoint: a wrong path is not taken for a fresh start,
    and a fresh start never saves over an earlier run's checkpoints."""
    p = Path(load)
    if _holds_checkpoint(p) or (save is not None and _holds_checkpoint(Path(save))):
        return False
    same_as_save = save is not None and p.resolve() == Path(save).resolve()
    return same_as_save or not p.exists() or (p.is_dir() and not any(p.iterdir()))


def resumes(load: str | None, save: str | None) -> bool:
    """Whether the run resumes: a --load that is not a first launch (whether it holds a checkpoint is
    `resolve_checkpoint`'s to say)."""
    return bool(load) and not is_first_launch(load, save)


def checkpoint_to_resume(load: str | None, save: str | None) -> Path | None:
    """The checkpoint `--load` names, or None for a fresh start (no --load, or a first launch)."""
    return resolve_checkpoint(load) if resumes(load, save) else None


def read_driver_state(checkpoint_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint_dir / DRIVER_STATE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"--load: {checkpoint_dir / DRIVER_STATE} is corrupt ({e.msg})") from None


def read_driver_parts(checkpoint_dir: Path) -> DriverParts:
    def json_part(name: str) -> dict[str, Any] | None:
        path = checkpoint_dir / name
        return json.loads(path.read_text()) if path.is_file() else None

    return DriverParts(read_driver_state(checkpoint_dir), torch.load(checkpoint_dir / ENGINE_RNG),
                       json_part(ROLLOUT_BUFFER), json_part(PROBE))
