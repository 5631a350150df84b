"""A dynamic-sampling filter written the way slime users write them: fn(args, samples) -> object with keep/reason."""

from dataclasses import dataclass


@dataclass
class DynamicFilterOutput:
    keep: bool
    reason: str | None = None


def keep_if_any_correct(args, samples):
    assert args.n_samples_per_prompt == len(samples)
    if any(s.reward == 1.0 for s in samples):
        return DynamicFilterOutput(keep=True)
    return DynamicFilterOutput(keep=False, reason="none_correct")


def reject_everything(samples):
    return False


def keep_even_groups(samples):
    """Keeps exactly every other group (ids are handed out in order): a known keep rate of one half."""
    return samples[0].group_id % 2 == 0
