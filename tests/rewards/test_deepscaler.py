import pytest

from rewards.deepscaler import score


@pytest.mark.parametrize(
    "response, label, expected",
    [
        ("<think>7+8=15</think>\\boxed{85}", "85", 1.0),
        ("<think>x</think> so \\boxed{84}", "85", 0.0),
        ("\\boxed{85}", "85", 0.0),  # no </think>: not graded
        ("<think>a</think>\\boxed{1} then </think> \\boxed{2}", "2", 1.0),  # text after the last marker
        ("<think>a</think>\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("<think>a</think>\\boxed{\\dfrac12}", "\\frac{1}{2}", 1.0),
        ("<think>a</think>\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("<think>a</think>\\boxed{10\\%}", "10", 1.0),
        ("<think>a</think>\\boxed{90^\\circ}", "90", 1.0),
        ("<think>a</think>\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),  # symbolic
        ("<think>a</think>\\boxed{85", "85", 0.0),  # unclosed box
        ("<think>a</think>\\boxed{85}", "", 0.0),
        ("<think>a</think>\\boxed{85}", "\\boxed{85}", 1.0),
        ("###Response \\boxed{3}", "3", 1.0),
    ],
)
def test_deepscaler_cases(response, label, expected):
    assert score(response, label) == expected
