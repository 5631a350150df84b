"""`--rm-type NAME` and `--custom-rm-path pkg.module:function` -> a `RewardSpec` the grader can call.

Plugins come in the forms RL users already have: `fn(sample)` or slime's `fn(args, sample)`, sync or
`async def`, returning a float or a dict with a `score` key (extra keys are logged); with `--group-rm`
the function receives the samples of one prompt's group and returns a list.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from async_rl.errors import UserInputError
from rewards import dapo, deepscaler, gsm8k, math

RULE_REWARDS: dict[str, Callable[[str, str], float | dict]] = {
    "deepscaler": deepscaler.score,
    "dapo": dapo.score,
    "math": math.score,
    "gsm8k": gsm8k.score,
}


@dataclass(frozen=True)
class RewardSpec:
    name: str  # how messages refer to it: the flag and its value
    fn: Callable[..., Any]
    takes_args: bool  # slime style: fn(args, sample_or_group)
    is_async: bool
    group: bool  # fn(group) -> list of rewards


def load_function(path: str, flag: str) -> Callable:
    """Import `pkg.module:function`, or slime's `pkg.module.function`; errors name the flag and what is missing."""
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not sep or not module_name or not attr:
        raise UserInputError(f"{flag}: expected pkg.module:function or pkg.module.function, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserInputError(f"{flag}: cannot import module {module_name!r} ({e})") from None
    if not hasattr(module, attr):
        raise UserInputError(f"{flag}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def grade_with_rule(rule: Callable[[str, str], float | dict], sample: Any) -> float | dict:
    """A rule reward of (response, label) applied to a sample; module-level so that workers can unpickle it."""
    return rule(sample.response, sample.label if sample.label is not None else "")


REMOTE = "remote_rm"


def resolve_reward(rm_type: str, custom_rm_path: str | None = None, group_rm: bool = False,
                   rm_url: str | None = None) -> RewardSpec:
    if custom_rm_path:
        fn = load_function(custom_rm_path, "--custom-rm-path")
        n_params = len([p for p in inspect.signature(fn).parameters.values()
                        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
        if n_params not in (1, 2):
            raise UserInputError(
                f"--custom-rm-path {custom_rm_path}: expected fn(sample) or fn(args, sample), it takes {n_params} arguments"
            )
        return RewardSpec(f"--custom-rm-path {custom_rm_path}", fn, n_params == 2, inspect.iscoroutinefunction(fn), group_rm)
    if rm_type == REMOTE:
        if not rm_url:
            raise UserInputError("--rm-type remote_rm needs --rm-url, the reward server's URL")
        from rewards.remote import remote_rm

        return RewardSpec(f"--rm-type remote_rm --rm-url {rm_url}", remote_rm, True, True, False)
    if rm_url:
        raise UserInputError("--rm-url applies to --rm-type remote_rm")
    if rm_type not in RULE_REWARDS:
        raise UserInputError(f"--rm-type: unknown reward {rm_type!r}; choose from {', '.join([*RULE_REWARDS, REMOTE])}")
    if group_rm:
        raise UserInputError("--group-rm applies to --custom-rm-path functions, not to --rm-type rewards")
    return RewardSpec(f"--rm-type {rm_type}", functools.partial(grade_with_rule, RULE_REWARDS[rm_type]), False, False, False)
