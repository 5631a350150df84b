import json

import pytest

from rewards import dapo, gsm8k, math
from tests.conftest import FIXTURES


def gsm8k_rows():
    return [json.loads(line) for line in (FIXTURES / "gsm8k_test_head24.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("row", gsm8k_rows()[:12], ids=lambda r: r["label"])
def test_gsm8k_reads_the_reference_solution_and_rejects_a_wrong_number(row):
    assert gsm8k.score(row["solution"], row["label"]) == 1.0
    assert gsm8k.score(row["solution"].rsplit("####", 1)[0] + f"#### {int(row['label']) + 1}", row["label"]) == 0.0


def test_gsm8k_falls_back_to_the_last_number_and_survives_huge_ones():
    assert gsm8k.score("She makes 9 * 2 = $18 a day, so 18.", "18") == 1.0
    assert gsm8k.score("no number at all", "18") == 0.0
    assert gsm8k.score("9" * 100_000, "18") == 0.0


@pytest.mark.parametrize(
    "response, label, expected",
    [
        ("reasoning...\nAnswer: 34", "34", 1.0),
        ("Answer: $\\boxed{34}$", "34", 1.0),
        ("Answer: 34 degrees", "34", 1.0),
        ("Answer: 1,000", "1000", 1.0),
        ("Answer: 33\nAnswer: 34", "34", 1.0),  # the last Answer line counts
        ("Answer: 35", "34", -1.0),
        ("the answer is 34", "34", -1.0),  # no Answer: line
    ],
)
def test_dapo_answer_line(response, label, expected):
    result = dapo.score(response, label)
    assert result["score"] == expected and result["acc"] == float(expected > 0)


@pytest.mark.parametrize(
    "response, label, expected",
    [
        ("<think>long</think> so the answer is $\\boxed{\\frac{1}{2}}$", "0.5", 1.0),
        ("The answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("No thinking, final answer: $\\boxed{18}$", "18", 1.0),
        ("$\\boxed{19}$", "18", 0.0),
        ("<think>\\boxed{18}</think> final: $\\boxed{17}$", "18", 0.0),  # only after </think>
    ],
)
def test_math_verify_grader(response, label, expected):
    assert math.score(response, label) == expected
