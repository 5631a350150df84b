"""Summary statistics of a batch of graded samples."""

from __future__ import annotations

import statistics

from async_rl.sample import Sample, SampleStatus


def rollout_metrics(samples: list[Sample], prefix: str = "rollout") -> dict[str, float]:
    scores = [s.score for s in samples]
    lengths = [s.response_length for s in samples]
    metrics = {
        f"{prefix}/reward_mean": statistics.fmean(scores),
        f"{prefix}/response_len_mean": statistics.fmean(lengths),
        f"{prefix}/response_len_max": float(max(lengths)),
        f"{prefix}/truncated_frac": sum(s.status == SampleStatus.TRUNCATED for s in samples) / len(samples),
        f"{prefix}/samples": float(len(samples)),
    }
    extras: dict[str, list[float]] = {}
    for s in samples:
        if isinstance(s.reward, dict):
            for key, value in s.reward.items():
                if key != "score" and isinstance(value, (int, float)):
                    extras.setdefault(key, []).append(float(value))
    metrics.update({f"{prefix}/reward_{k}_mean": statistics.fmean(v) for k, v in extras.items()})
    return metrics


def group_metrics(samples: list[Sample], group_size: int) -> dict[str, float]:
    """How many groups carry a learning signal (GRPO gives a group of equal rewards zero advantage)."""
    groups = [samples[i : i + group_size] for i in range(0, len(samples), group_size)]
    flat = sum(len({s.score for s in g}) == 1 for g in groups)
    return {"rollout/zero_variance_group_frac": flat / max(len(groups), 1)}


def overlap_ratio(metrics: dict[str, float]) -> dict[str, float]:
    """`perf/overlap_ratio`: the share of a batch's generation time the trainer did not wait for.

    1 means generation was hidden entirely behind training (and weight pushes); 0 means the trainer
    waited for all of it, as in the sync loop.
    """
    rollout_time = metrics.get("perf/rollout_time_s")
    if not rollout_time:
        return {}
    return {"perf/overlap_ratio": min(1.0, max(0.0, 1.0 - metrics["perf/rollout_wait_s"] / rollout_time))}
