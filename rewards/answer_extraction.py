"""Locating the final answer in a model response."""

from __future__ import annotations

THINK_END = "</think>"
RESPONSE_MARKER = "###Response"


def text_after_reasoning(response: str) -> str | None:
    """The part of a response that is graded, as DeepScaleR defines it.

    After the last `</think>`; failing that, the text between the first `###Response` and the next one;
    None when the response has neither marker.
    """
    if THINK_END in response:
        return response.rsplit(THINK_END, 1)[1]
    if RESPONSE_MARKER in response:
        return response.split(RESPONSE_MARKER)[1]
    return None


def last_boxed_block(text: str) -> str | None:
    """The last `\\boxed...{...}` (or, with no `\\boxed`, `\\fbox...{...}`) including its braces, balanced.

    None when there is no box or its braces never close.
    """
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def boxed_answer(text: str) -> str | None:
    """The contents of the last `\\boxed{...}`; None without one (an `\\fbox` or `\\boxed 5` does not count)."""
    if "\\boxed" not in text:
        return None
    block = last_boxed_block(text)
    if block is None or not block.startswith("\\boxed{") or not block.endswith("}"):
        return None
    return block[len("\\boxed{") : -1]
