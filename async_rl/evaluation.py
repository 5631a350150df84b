"""Evaluation on held-out prompt sets: avg@k and pass@k per set, with the engines' current weights.

Used by both training loops (`--eval-interval`) and by `python -m async_rl.evaluate` on a checkpoint.
"""

from __future__ import annotations

import time
from math import comb
from pathlib import Path

from async_rl.data.prompt_dataset import PromptDataset
from async_rl.rollout.batch_assembler import BatchAssembler
from async_rl.rollout.engine import SamplingParams
from async_rl.rollout.metrics import rollout_metrics
from async_rl.sample import Sample


def eval_sets_from_flag(values: list[str] | None) -> dict[str, str]:
    """`--eval-prompt-data PATH` or `--eval-prompt-data NAME PATH [NAME PATH ...]` -> {name: path}."""
    if not values:
        return {}
    if len(values) == 1:
        return {Path(values[0]).stem: values[0]}
    return dict(zip(values[0::2], values[1::2]))


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples, `correct` of them right."""
    if n - correct < k:
        return 1.0
    return 1.0 - comb(n - correct, k) / comb(n, k)


def score_groups(name: str, samples: list[Sample], n: int) -> dict[str, float]:
    """`eval/<name>/avg@n` (mean reward) and `eval/<name>/pass@k` for k = 1, 2, 4, ... up to n.

    A response counts as correct when its reward is positive (deepscaler and math give 1, dapo +1).
    """
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group_id, []).append(s)
    ks = sorted({k for k in (2**i for i in range(n.bit_length())) if k <= n} | {n})
    metrics = {f"eval/{name}/avg@{n}": sum(s.score for s in samples) / len(samples)}
    for k in ks:
        estimates = [pass_at_k(len(g), sum(s.score > 0 for s in g), k) for g in groups.values()]
        metrics[f"eval/{name}/pass@{k}"] = sum(estimates) / len(estimates)
    return metrics


class Evaluator:
    def __init__(self, assembler: BatchAssembler, eval_sets: dict[str, PromptDataset], n_samples: int,
                 params: SamplingParams):
        self.assembler, self.eval_sets, self.n_samples, self.params = assembler, eval_sets, n_samples, params

    def evaluate(self) -> dict[str, float]:
        """Every set is submitted at once (the engines work through them together), then graded."""
        start = time.perf_counter()
        pending = {name: self.assembler.submit(ds.rows, self.n_samples, self.params, f"eval {name}")
                   for name, ds in self.eval_sets.items()}
        metrics: dict[str, float] = {}
        all_scores: list[float] = []
        for name, p in pending.items():
            samples, _ = self.assembler.collect(p)
            all_scores.extend(s.score for s in samples)
            metrics |= rollout_metrics(samples, prefix=f"eval/{name}") | score_groups(name, samples, self.n_samples)
        metrics["eval/reward_mean"] = sum(all_scores) / len(all_scores)
        metrics["perf/eval_time_s"] = time.perf_counter() - start
        return metrics
