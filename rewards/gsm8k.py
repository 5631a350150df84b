"""GSM8K's reward: the number after the last `####`, or else the last number in the response."""

from __future__ import annotations

import re

_HASHES = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
MAX_NUMBER_CHARS = 64  # longer digit runs are not an answer, and float() of them is slow


def extract_answer(response: str) -> str | None:
    marked = _HASHES.findall(response)
    numbers = marked or _NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


def score(response: str, label: str | int | float) -> float:
    answer = extract_answer(response)
    if answer is None or len(answer) > MAX_NUMBER_CHARS:
        return 0.0
    try:
        return 1.0 if abs(float(answer) - float(str(label).replace(",", ""))) < 1e-6 else 0.0
    except ValueError:
        return 0.0
