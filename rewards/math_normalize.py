"""Answer normalisation and equivalence for MATH-style answers, with DeepScaleR's semantics.

Two checks, either of which accepts: `equal_after_hendrycks_normalisation` (the MATH benchmark's string
normalisation) and `equal_under_sympy` (a looser normalisation, tuples compared element by element,
then symbolic simplification of the difference). Inputs that could make sympy explode are refused
rather than evaluated; the grading pool's timeout is the last line of defence.
"""

from __future__ import annotations

import re

import sympy
from sympy.parsing import sympy_parser

_TEXT_WRAPPED = re.compile(r"^\\text\{(?P<text>.+?)\}$")
_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month",
          "year", "foot", "feet", "inch", "yard")
_UNIT_PATTERNS = [re.compile(rf"{unit}(es)?(s)? *(\^[0-9]+)?") for unit in _UNITS]
_REFUSED_SUBSTRINGS = ("^{", "^(", "**")
_REFUSED_PATTERNS = (
    re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"),  # towers and large exponents
    re.compile(r"[0-9]{4,}!"), re.compile(r"\)!"),  # factorials of 1000 and up, or of an expression
)
_MAX_SYMPY_CHARS = 1000
_BRACKETS = "()[]"
_SYMPY_NAMES = {k: v for k, v in sympy.__dict__.items() if not k.startswith("_")}


# ---- MATH (Hendrycks) string normalisation -------------------------------------------------------


def _unwrap_text(answer: str) -> str:
    m = _TEXT_WRAPPED.search(answer)
    return m.group("text") if m else answer


def _expand_sqrt(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`."""
    head, *pieces = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in pieces)


def _expand_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`; a `\\frac` with under two characters after it leaves s unchanged."""
    head, *pieces = s.split("\\frac")
    out = head
    for p in pieces:
        if p[0] == "{":
            out += "\\frac" + p
            continue
        if len(p) < 2:
            return s
        numerator, second, rest = p[0], p[1], p[2:]
        out += "\\frac{" + numerator + "}" + (second + rest if second == "{" else "{" + second + "}" + rest)
    return out


def _integer_slash_to_frac(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _hendrycks_normalize(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    if "\\text{ " in s:  # a unit on the right
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("several unit annotations")
        s = parts[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # drop "k = " and the like
        s = sides[1]
    s = _expand_sqrt(s) if "\\sqrt" in s else s
    s = s.replace(" ", "")
    s = _expand_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _integer_slash_to_frac(s)


def hendrycks_normalize(answer: str | None) -> str | None:
    """The MATH benchmark's answer normalisation; an answer it cannot process is returned as it came."""
    if answer is None:
        return None
    answer = answer.strip()
    try:
        return _hendrycks_normalize(_unwrap_text(answer).strip())
    except (IndexError, ValueError):
        return _unwrap_text(answer).strip()


def equal_after_hendrycks_normalisation(given: str, truth: str) -> bool:
    return hendrycks_normalize(truth) == hendrycks_normalize(given)


# ---- sympy-side normalisation and comparison ------------------------------------------------------


def _latex_to_text(expr: str) -> str:
    from pylatexenc import latex2text

    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    text = latex2text.LatexNodes2Text().latex_to_text(expr)
    for symbol, name in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        text = text.replace(symbol, name)
    return text.strip()


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _is_integral(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _drop_thousands_commas(s: str) -> str:
    pattern = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
    while True:
        replaced = pattern.sub(r"\1\3\4", s)
        if replaced == s:
            return s
        s = replaced


def _is_integer_string(s: str) -> bool:
    try:
        return _is_integral(float(_drop_thousands_commas(s)))
    except ValueError:
        return False


def _is_fraction_string(s: str) -> bool:
    return re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", s) is not None


def sympy_normalize(expr: str | None) -> str | None:
    """The looser normalisation used before symbolic comparison: units, words, LaTeX to text, case."""
    if expr is None:
        return None
    expr = _unwrap_text(expr)
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for pattern in _UNIT_PATTERNS:
        expr = pattern.sub("", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    if _is_float(expr) and _is_integral(float(expr)):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # pylatexenc gives up on malformed LaTeX; keep the raw text then
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", r"\1+\2", expr)  # mixed numbers: 7 3/4 -> 7+3/4
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _is_integer_string(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def _may_evaluate(expr: str) -> bool:
    """Refuse free text (more than two distinct letters), and powers and factorials that could explode."""
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    return (
        len(letters) <= 2
        and len(expr) <= _MAX_SYMPY_CHARS
        and not any(s in expr for s in _REFUSED_SUBSTRINGS)
        and not any(p.search(expr) for p in _REFUSED_PATTERNS)
    )


def _difference_is_zero(truth: str, given: str) -> bool:
    expr = f"({truth})-({given})"
    if not _may_evaluate(expr):
        return False
    try:
        parsed = sympy_parser.parse_expr(
            expr.replace("^", "**"),
            local_dict={},
            global_dict={"__builtins__": {}, **_SYMPY_NAMES},
            transformations=sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,),
        )
        return sympy.simplify(parsed) == 0
    except Exception:  # anything sympy cannot parse or simplify is simply not equal
        return False


def _elements(expr: str) -> list[str]:
    """Elements of a tuple or interval `(a, b)` / `[a, b)`, or the expression itself."""
    expr = _drop_thousands_commas(expr)
    if not expr:
        return []
    if len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS and not any(c in expr[1:-1] for c in _BRACKETS):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def equal_under_sympy(given: str, truth: str) -> bool:
    truth_n, given_n = sympy_normalize(truth), sympy_normalize(given)
    if truth_n is None:
        return False
    if truth_n == given_n:
        return True
    if not given_n:
        return False
    truth_elems, given_elems = _elements(truth_n), _elements(given_n)
    if len(truth_elems) > 1 and (truth_n[0] != given_n[0] or truth_n[-1] != given_n[-1]):
        return False  # interval brackets differ
    if len(truth_elems) != len(given_elems):
        return False
    for t, g in zip(truth_elems, given_elems):
        if _is_fraction_string(t) and _is_fraction_string(g):
            ok = t == g  # an unreduced fraction is not the reduced answer
        elif _is_integer_string(t) != _is_integer_string(g):
            ok = False  # an integer answer must match as an integer
        else:
            ok = _difference_is_zero(t, g)
        if not ok:
            return False
    return True
