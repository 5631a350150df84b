"""Reward plugins in the forms users bring them: for the registry and grading tests."""

import asyncio
import signal
import time


def exact_label(sample):
    return 1.0 if sample.response.strip() == sample.label else 0.0


async def slime_style(args, sample):
    await asyncio.sleep(0)
    return {"score": float(sample.label in sample.response), "seen_batch": float(args.rollout_batch_size)}


def group_best_of(samples):
    lengths = [len(s.response) for s in samples]
    return [1.0 if n == min(lengths) else 0.0 for n in lengths]


def flaky(sample):
    """Raises on group 0, sleeps past any timeout on group 1, grades the rest."""
    if sample.group_id % 3 == 0:
        raise ValueError("plugin bug")
    if sample.group_id % 3 == 1:
        time.sleep(60)
    return 1.0


def deaf_to_alarms(sample):
    """Stands in for C code that never returns to the interpreter: the worker's alarm cannot stop it."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(60)
    return 1.0


def returns_nonsense(sample):
    return "yes"


def not_a_number(sample):
    return float("nan")
