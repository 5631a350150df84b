import json
import time
from pathlib import Path

import pytest

from rewards.deepscaler import lacks_reasoning_marker, score

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    "response, label, expected",
    [
        ("<think>7+8=15</think>\\boxed{85}", "85", 1.0),
        ("<think>x</think> so \\boxed{84}", "85", 0.0),
        ("\\boxed{85}", "85", 0.0),  # no </think>: not graded
        ("<think>a</think>\\boxed{1} then </think> \\boxed{2}", "2", 1.0),  # after the last marker
        ("###Response \\boxed{3} ###Response \\boxed{4}", "3", 1.0),  # between the first two ###Response
        ("<think>a</think>\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("<think>a</think>\\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0),
        ("<think>a</think>\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("<think>a</think>\\boxed{10\\%}", "10", 1.0),
        ("<think>a</think>\\boxed{90^\\circ}", "90", 1.0),
        ("<think>a</think>\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),  # symbolic
        ("<think>a</think>\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 0.0),  # unreduced fraction is rejected
        ("<think>a</think>\\boxed{85", "85", 0.0),  # unclosed box
        ("<think>a</think>\\fbox{85}", "85", 0.0),
        ("<think>a</think>\\boxed{85}", "", 0.0),
        ("<think>a</think>\\boxed{85}", "\\boxed{85}", 1.0),
        ("<think>a</think>\\boxed{1,000}", "1000", 1.0),
    ],
)
def test_deepscaler_hand_cases(response, label, expected):
    assert score(response, label) == expected


@pytest.mark.parametrize("table", ["deepscaler_cases.jsonl", "deepscaler_heldback.jsonl"])
def test_agrees_with_the_reference_grader_on_real_labels(table):
    cases = [json.loads(line) for line in (DATA / table).read_text().splitlines()]
    assert len(cases) > 1000 and 0.2 < sum(c["expected"] for c in cases) / len(cases) < 0.8
    disagreements = [c for c in cases if score(c["response"], c["label"]) != c["expected"]]
    assert len(disagreements) / len(cases) <= 0.005, disagreements[:5]


HOSTILE = [
    "<think>x</think>\\boxed{" + "9" * 100_000 + "}",
    "<think>x</think>" + "a" * 100_000,
    "<think>x</think>\\boxed{" * 1000,
    "<think>x</think>\\boxed{" + "{" * 1000 + "1" + "}" * 1000 + "}",
    "<think>x</think>\\boxed{9^9^9^9}",
    "<think>x</think>\\boxed{10^{1000000}}",
    "<think>x</think>\\boxed{(" * 500 + ")" * 500 + "}",
    "<think>x</think>\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "<think>x</think>\\boxed{1000000!}",
    "<think>x</think>\\boxed{99999!!}",
    "<think>x</think>\\boxed{(999+1)!}",
]


@pytest.mark.parametrize("label", ["85", "\\frac{1}{2}"])  # a non-integer label reaches the symbolic comparison
@pytest.mark.parametrize("response", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_responses_are_graded_quickly_in_process(response, label):
    start = time.perf_counter()
    assert score(response, label) == 0.0
    assert time.perf_counter() - start < 5.0


def test_missing_marker_detection():
    assert lacks_reasoning_marker("The answer is \\boxed{3}")
    assert not lacks_reasoning_marker("<think>x</think>\\boxed{3}")
