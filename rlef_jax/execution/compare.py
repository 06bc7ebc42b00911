"""Output and value comparison: CodeContests' `OutputsMatch` for stdout, EvalPlus semantics for values.

Paper §1.4 leaves the comparison to the code_contests checker; §1.6 uses EvalPlus's checks and
unittest-style assertion messages.
"""
from __future__ import annotations

import math
import re
import unittest

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
CODECONTESTS_ATOL = 1e-5


def outputs_match(expected: str, actual: str, comparison: str = "codecontests") -> bool:
    """Whether `actual` stdout matches `expected`.

    "codecontests" follows code_contests' `OutputsMatch`: split both on whitespace (empty tokens
    dropped), lowercase, require the same number of tokens; two numeric tokens match when they differ by
    less than 1e-5 in absolute value, other tokens must be equal. One deliberate refinement: two integer
    tokens compare exactly (doubles would equate 10**20 and 10**20 + 1). "exact": byte-for-byte equal.
    "lines": equal line by line after stripping trailing whitespace of each line and trailing empty lines.
    """
    if comparison == "exact":
        return expected == actual
    if comparison == "lines":
        def norm(s):
            lines = [line.rstrip() for line in s.splitlines()]
            while lines and not lines[-1]:
                lines.pop()
            return lines
        return norm(expected) == norm(actual)
    if comparison != "codecontests":
        raise ValueError(f"comparison must be 'codecontests', 'exact' or 'lines', got {comparison!r}")
    exp_tokens, act_tokens = expected.lower().split(), actual.lower().split()
    if len(exp_tokens) != len(act_tokens):
        return False
    return all(_tokens_match(e, a) for e, a in zip(exp_tokens, act_tokens))


def _tokens_match(e: str, a: str) -> bool:
    if e == a:
        return True
    if _INTEGER.fullmatch(e) and _INTEGER.fullmatch(a):
        return int(e) == int(a)
    if _NUMBER.fullmatch(e) and _NUMBER.fullmatch(a):
        return abs(float(e) - float(a)) < CODECONTESTS_ATOL
    return False


# -------------------------------------------------------------------------------------------- values
def is_floats(x) -> bool:
    """EvalPlus's test for float outputs: a float, or a non-empty list/tuple of floats."""
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _allclose(a, b, atol: float, rtol: float = 1e-7) -> bool:
    """numpy.allclose for scalars and (nested) equal-length sequences, without numpy."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))) or len(a) != len(b):
            return False
        return all(_allclose(x, y, atol, rtol) for x, y in zip(a, b))
    if not all(isinstance(v, (int, float)) for v in (a, b)):
        return a == b
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def effective_atol(expected, atol: float) -> float:
    """EvalPlus: a task's atol, or 1e-6 when it is 0 and the expected value is float(s)."""
    return atol if atol else (1e-6 if is_floats(expected) else 0.0)


def poly(xs, x) -> float:
    """HumanEval/32's polynomial, evaluated as its prompt and EvalPlus's oracle do."""
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def check_value(actual, expected, atol: float = 0.0, oracle: str = "equal", args=()) -> tuple[bool, str | None]:
    """(passed, assertion message) for one function test, following EvalPlus's `unsafe_execute`.

    equal: exact `==`, or, when an atol applies (see `effective_atol`), same type, same length and
    allclose(rtol=1e-7, atol). poly_root: |poly(xs, actual)| <= atol. set_equal: set(actual) ==
    set(expected). not_none: `expected` is the canonical solution's `result is not None`. The message is
    the one the matching unittest.TestCase assertion raises (paper §1.6).
    """
    if oracle == "poly_root":
        try:
            residual = abs(poly(args[0], actual))
        except Exception as e:
            return False, f"{type(e).__name__}: {e}"
        if residual <= atol:
            return True, None
        return False, _unittest_message("assertLessEqual", residual, atol)
    if oracle == "set_equal":
        try:
            ok = set(actual) == set(expected)
        except TypeError:
            ok = False
        return (True, None) if ok else (False, _unittest_message("assertEqual", _as_set(actual), _as_set(expected)))
    if oracle == "not_none":
        ok = actual == expected if isinstance(actual, bool) else expected == (actual is not None)
        return (True, None) if ok else (False, _unittest_message("assertEqual", actual is not None, expected))
    try:
        exact = bool(actual == expected)
    except Exception:
        exact = False
    tol = effective_atol(expected, atol)
    if exact:
        return True, None
    if tol and type(actual) is type(expected) and _allclose(actual, expected, tol):
        return True, None
    if tol and isinstance(expected, float) and isinstance(actual, (int, float)):
        return False, _unittest_message("assertAlmostEqual", actual, expected, None, None, tol)
    return False, _unittest_message("assertEqual", actual, expected)


def _as_set(x):
    try:
        return set(x)
    except TypeError:
        return x


_TC = unittest.TestCase()


def _unittest_message(method: str, *args) -> str:
    try:
        getattr(_TC, method)(*args)
    except AssertionError as e:
        return f"AssertionError: {e}"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return f"AssertionError: {args[0]!r} != {args[1]!r}"
