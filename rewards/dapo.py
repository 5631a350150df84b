"""DAPO's reward: the last `Answer:` line, normalised Minerva-style, +1 if it equals the label, else -1."""

from __future__ import annotations

import re

_ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")
_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
            "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
            "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
            "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;",
            ",\\!", "{,}", '"', "\\dots", "<|im_end|>", "<|endoftext|>"]
TAIL_CHARS = 300  # only the end of a response is searched (MATH-500's longest answer is 159 characters)


def normalize_final_answer(answer: str) -> str:
    """Minerva's normalisation: the right side of an equation, units and words dropped, TeX shorthand expanded."""
    answer = str(answer).split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for text in _REMOVED:
        answer = answer.replace(text, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer.strip()


def _canonical_label(label: str) -> str:
    truth = normalize_final_answer(label)
    try:
        return str(int(float(truth)))  # DAPO's labels are integers: "34.0" and "34" are the same answer
    except (ValueError, OverflowError):
        return truth


def score(response: str, label: str | int | float) -> dict:
    """{"score": 1.0 or -1.0, "acc": 1.0 or 0.0, "pred": the normalised prediction}."""
    matches = _ANSWER_LINE.findall(response[-TAIL_CHARS:])
    pred = normalize_final_answer(matches[-1]) if matches else "[INVALID]"
    correct = pred == _canonical_label(str(label))
    return {"score": 1.0 if correct else -1.0, "acc": float(correct), "pred": pred}
