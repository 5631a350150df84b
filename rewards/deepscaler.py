"""DeepScaleR-style rule reward: 1.0 when the last boxed answer after the reasoning matches the label."""

from __future__ import annotations

from rewards.answer_extraction import last_boxed, text_after_reasoning
from rewards.math_normalize import normalize_answer, symbolically_equal


def score(response: str, label: str) -> float:
    """Graded only from the text after the last `</think>`; no marker, no box or an empty label scores 0."""
    if not label:
        return 0.0
    final = text_after_reasoning(response)
    if final is None:
        return 0.0
    answer = last_boxed(final)
    if answer is None:
        return 0.0
    truth = last_boxed(label) if "\\boxed" in label else label
    if truth is None:
        return 0.0
    a, t = normalize_answer(answer), normalize_answer(truth)
    if a == t:
        return 1.0
    return 1.0 if symbolically_equal(a, t) else 0.0
