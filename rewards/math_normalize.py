"""MATH-style answer normalisation and a bounded symbolic equality check."""

from __future__ import annotations

import re

_UNIT_TEXT = re.compile(r"\\text\{\s*[a-zA-Z ]+\}$")
_MAX_SYMPY_CHARS = 200  # longer strings are not worth the parse risk (and never a MATH answer)


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1b` -> `\\frac{1}{b}`."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        out += f"{{{a}}}{b}{rest}" if b == "{" else f"{{{a}}}{{{b}}}{rest}"
    return out


def _slash_to_frac(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def normalize_answer(answer: str) -> str:
    """Canonical string form of a MATH answer (units, `\\left`, `\\dfrac`, degrees, percent, spacing...)."""
    s = answer.strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = _UNIT_TEXT.sub("", s).strip()
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if "=" in s and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=", 1)[1]
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _slash_to_frac(s)
    if re.fullmatch(r"-?\d+\.\d*?0+", s):
        s = s.rstrip("0").rstrip(".")
    s = re.sub(r"(?<=\d),(?=\d{3}(\D|$))", "", s)
    return s


def symbolically_equal(a: str, b: str) -> bool:
    """sympy equality of two normalised answers, refusing inputs that could explode (huge powers, long text)."""
    if len(a) > _MAX_SYMPY_CHARS or len(b) > _MAX_SYMPY_CHARS or "^" in a + b and re.search(r"\^\{?\d{3,}", a + b):
        return False
    try:
        import sympy
        from sympy.parsing.sympy_parser import parse_expr, standard_transformations, implicit_multiplication_application

        def parse(s: str):
            s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
            s = s.replace("\\sqrt", "sqrt").replace("\\pi", "pi").replace("^", "**").replace("{", "(").replace("}", ")")
            if "\\" in s:
                raise ValueError("unparsed LaTeX")
            return parse_expr(s, transformations=standard_transformations + (implicit_multiplication_application,), evaluate=True)

        return bool(sympy.simplify(parse(a) - parse(b)) == 0)
    except Exception:
        return False
