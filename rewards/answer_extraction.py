"""Locating the final answer in a model response."""

from __future__ import annotations

THINK_END = "</think>"
RESPONSE_MARKER = "###Response"


def text_after_reasoning(response: str) -> str | None:
    """The text after the last `</think>` (or `###Response`); None when the response has neither."""
    for marker in (THINK_END, RESPONSE_MARKER):
        if marker in response:
            return response.rsplit(marker, 1)[1]
    return None


def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces balanced; None if absent or unclosed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed"):]
        return rest.split("$")[0].strip() if rest.startswith(" ") else None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None
