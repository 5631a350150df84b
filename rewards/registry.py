"""`--rm-type NAME` and `--custom-rm-path pkg.module:function` -> a reward function of a Sample."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from async_rl.errors import UserInputError
from rewards import deepscaler

RewardFn = Callable[[Any], "float | dict"]

_BUILTIN: dict[str, Callable[[str, str], float]] = {
    "deepscaler": deepscaler.score,
}


def load_function(path: str, flag: str) -> Callable:
    """Import `pkg.module:function`; errors name the flag and what is missing."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UserInputError(f"{flag}: expected pkg.module:function, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserInputError(f"{flag}: cannot import module {module_name!r} ({e})") from None
    if not hasattr(module, attr):
        raise UserInputError(f"{flag}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def get_reward_fn(rm_type: str, custom_rm_path: str | None = None) -> RewardFn:
    """A function `fn(sample) -> float | dict`: the plugin when given, else the named rule reward."""
    if custom_rm_path:
        return load_function(custom_rm_path, "--custom-rm-path")
    if rm_type not in _BUILTIN:
        raise UserInputError(f"--rm-type: unknown reward {rm_type!r}; choose from {', '.join(sorted(_BUILTIN))}")
    grade = _BUILTIN[rm_type]
    return lambda sample: grade(sample.response, sample.label or "")
