"""Rewards per second of the deepscaler grader through the grading pool, with 1 and 2 worker processes.

Typical responses: a few hundred tokens of reasoning, then one boxed answer; half right, half wrong,
labels from MATH-500. The in-process rate is the baseline each pool rate is compared with.

    python benchmarks/reward_throughput.py --samples 2000
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from async_rl.sample import Sample
from rewards.deepscaler import score
from rewards.grading import RewardGrader
from rewards.registry import resolve_reward

REPO = Path(__file__).resolve().parents[1]
REASONING = "Let me compute this carefully. First, simplify the expression and check each case. " * 12


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    labels = [json.loads(line)["label"] for line in (REPO / "tests" / "fixtures" / "math500_head8.jsonl").open()]
    rng = random.Random(seed)
    batch = []
    for i in range(n):
        label = rng.choice(labels)
        answer = label if i % 2 == 0 else label + "1"
        batch.append(Sample(prompt="p", prompt_tokens=[1], response=f"<think>{REASONING}</think> So the answer is "
                            f"$\\boxed{{{answer}}}$.", label=label, group_id=i, index=i))
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    batch = make_samples(args.samples)

    start = time.perf_counter()
    for s in batch:
        score(s.response, s.label)
    baseline = args.samples / (time.perf_counter() - start)
    rows = [("in-process (baseline)", baseline)]
    for workers in (1, 2):
        grader = RewardGrader(resolve_reward("deepscaler"), args=argparse.Namespace(), num_workers=workers)
        grader.grade(batch[:workers * 4])  # start the workers outside the timed region
        start = time.perf_counter()
        grader.grade(batch)
        rows.append((f"pool, {workers} worker{'s' if workers > 1 else ''}", args.samples / (time.perf_counter() - start)))
        grader.close()
    print("| grader | rewards/s | vs in-process |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
