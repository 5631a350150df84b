"""A `math-verify` grader for responses with or without think tags: 1.0 when the final answer equals the label."""

from __future__ import annotations

from rewards.answer_extraction import THINK_END


def score(response: str, label: str | int | float) -> float:
    """The answer is read from the text after `</think>` when present, else from the whole response."""
    from math_verify import parse, verify

    final = response.rsplit(THINK_END, 1)[1] if THINK_END in response else response
    truth = str(label)
    if not truth:
        return 0.0
    gold = parse(truth if "\\boxed" in truth or truth.startswith("$") else f"${truth}$")
    answer = parse(final)
    return 1.0 if gold and answer and verify(gold, answer) else 0.0
