"""DeepScaleR's rule reward, as RL users know it from deepscaler and slime's `--rm-type deepscaler`."""

from __future__ import annotations

from rewards.answer_extraction import RESPONSE_MARKER, THINK_END, boxed_answer, text_after_reasoning
from rewards.math_normalize import equal_after_hendrycks_normalisation, equal_under_sympy


def score(response: str, label: str | int | float) -> float:
    """1.0 when the last `\\boxed{}` after the reasoning equals the label, else 0.0.

    Only the text after `</think>` (or after `###Response`) is graded, so a response without either
    marker scores 0, as does one without a closed box, or an empty label. A label holding a `\\boxed{}`
    is unwrapped. Equal means equal after MATH normalisation, or symbolically equal.
    """
    final = text_after_reasoning(response)
    if final is None:
        return 0.0
    answer = boxed_answer(final)
    if answer is None:
        return 0.0
    truth = str(label)
    if truth == "":
        return 0.0
    if "\\boxed" in truth:
        truth = boxed_answer(truth)
        if truth is None:
            return 0.0
    return 1.0 if equal_after_hendrycks_normalisation(answer, truth) or equal_under_sympy(answer, truth) else 0.0


def lacks_reasoning_marker(response: str) -> bool:
    """Such a response always scores 0 under this reward (see `--rm-type math` for models that do not think)."""
    return THINK_END not in response and RESPONSE_MARKER not in response
