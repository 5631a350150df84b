"""Dynamic-sampling group filters: decide whether a prompt's group of samples is worth training on.

A filter is `fn(samples) -> bool | FilterResult`, or slime's form `fn(args, samples)` returning an object
with `keep` and `reason`; both load unchanged through `--dynamic-sampling-filter-path pkg.module:function`.
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from async_rl.sample import Sample
from rewards.registry import load_function


@dataclass(frozen=True)
class FilterResult:
    keep: bool
    reason: str | None = None  # why a group was dropped; names the `rollout/filter_drop_<reason>` counter


GroupFilter = Callable[[list[Sample]], FilterResult]


def check_reward_nonzero_std(samples: list[Sample]) -> FilterResult:
    """DAPO dynamic sampling: a group whose rewards are all equal has zero advantage, so drop it."""
    scores = {s.score for s in samples}
    if len(scores) > 1:
        return FilterResult(True)
    return FilterResult(False, "all_correct" if scores == {1.0} else "zero_std")


def _as_result(value: Any, path: str) -> FilterResult:
    if isinstance(value, bool):
        return FilterResult(value, None if value else "filtered")
    if hasattr(value, "keep"):
        keep = bool(value.keep)
        return FilterResult(keep, None if keep else str(getattr(value, "reason", None) or "filtered"))
    if isinstance(value, tuple) and len(value) == 2:
        return FilterResult(bool(value[0]), None if value[0] else str(value[1] or "filtered"))
    raise TypeError(f"--dynamic-sampling-filter-path {path} returned {value!r}; expected a bool or (keep, reason)")


def load_group_filter(path: str, args: argparse.Namespace) -> GroupFilter:
    """Load a filter by `pkg.module:function`; slime-style two-argument filters receive the flat flags."""
    fn = load_function(path, "--dynamic-sampling-filter-path")
    takes_args = len(inspect.signature(fn).parameters) >= 2
    return lambda samples: _as_result(fn(args, samples) if takes_args else fn(samples), path)
