"""Output comparison (CodeContests OutputsMatch), the value codec and EvalPlus value checks."""
import math
import random

import pytest

from rlef_jax.execution import codec
from rlef_jax.execution.compare import check_value, effective_atol, outputs_match, poly


@pytest.mark.parametrize("expected,actual,ok", [
    ("3\n", "3", True), ("1 2 3\n", "1\n2\n   3  \n\n", True), ("YES\n", "yes", True),
    ("0.5\n", "0.500009", True), ("0.5\n", "0.50002", False), ("0.5", "0.49999", False),
    ("1 2", "1 2 3", False), ("abc", "abd", False), ("", "\n \n", True),
    ("100000000000000000000", "100000000000000000001", False), ("1e5", "100000.000001", True),
    ("nan", "NaN", True), ("-0", "0", True), ("1.0", "1", True),
])
def test_codecontests_comparison(expected, actual, ok):
    assert outputs_match(expected, actual) is ok


def test_exact_and_lines_comparisons():
    assert outputs_match("1 2\n", "1 2\n", "exact") and not outputs_match("1 2\n", "1  2\n", "exact")
    assert outputs_match("a\nb\n", "a  \nb\n\n", "lines") and not outputs_match("a b\n", "a\nb\n", "lines")
    with pytest.raises(ValueError, match="comparison must be"):
        outputs_match("", "", "fuzzy")


def test_codecontests_comparison_random_properties():
    rng = random.Random(0)
    for _ in range(300):
        nums = [rng.uniform(-1e3, 1e3) for _ in range(rng.randint(1, 8))]
        exp = " ".join(f"{x:.9f}" for x in nums)
        jitter = [x + rng.uniform(-9e-6, 9e-6) for x in nums]
        seps = [rng.choice([" ", "\n", "\t ", "  "]) for _ in nums]
        act = "".join(f"{x:.9f}{s}" for x, s in zip(jitter, seps))
        assert outputs_match(exp, act)
        k = rng.randrange(len(nums))
        jitter[k] += rng.choice([-1, 1]) * 2e-5
        assert not outputs_match(exp, " ".join(f"{x:.9f}" for x in jitter))


def random_value(rng, depth=0):
    kinds = ["int", "float", "str", "none", "bool", "big"] + (["list", "tuple", "set", "dict", "idict"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "int":
        return rng.randint(-10**6, 10**6)
    if k == "big":
        return rng.randint(-10**40, 10**40)
    if k == "float":
        return rng.choice([rng.uniform(-1e9, 1e9), math.inf, -math.inf, 0.0])
    if k == "str":
        return "".join(rng.choice("ab \n'\"\\é") for _ in range(rng.randint(0, 6)))
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    items = [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if k == "list":
        return items
    if k == "tuple":
        return tuple(items)
    if k == "set":
        return {x for x in items if isinstance(x, (int, str, float))}
    if k == "dict":
        return {str(i): v for i, v in enumerate(items)}
    return {i: v for i, v in enumerate(items)}


def test_codec_round_trips_random_values():
    rng = random.Random(1)
    for _ in range(2000):
        v = random_value(rng)
        back = codec.loads(codec.dumps(v))
        assert back == v and type(back) is type(v)


def test_codec_keeps_nan_and_types_apart():
    assert math.isnan(codec.loads(codec.dumps(float("nan"))))
    assert codec.loads(codec.dumps((1, [2]))) == (1, [2])
    assert codec.loads("[[1, 2], {\"a\": 1}]") == [[1, 2], {"a": 1}]
    assert codec.loads(codec.dumps({"__rlef__": 1})) == {"__rlef__": 1}
    opaque = codec.loads(codec.dumps(object()))
    assert opaque != object() and repr(opaque).startswith("<object object")


def test_check_value_follows_evalplus():
    assert check_value(True, False) == (False, "AssertionError: True != False")
    assert check_value([1, 2], [1, 2]) == (True, None)
    assert check_value(0.1 + 0.2, 0.3)[0]                        # float expected: atol 1e-6 enforced
    assert not check_value(0.3001, 0.3)[0]
    assert check_value(0.30009, 0.3, atol=1e-4)[0]
    assert not check_value([0.3, 0.4], (0.3, 0.4), atol=1e-4)[0]   # types must match in the atol path
    assert not check_value([0.3], [0.3, 0.4], atol=1e-4)[0]
    assert check_value([0.1 + 0.2, 1.0], [0.3, 1.0])[0]
    ok, msg = check_value(0.5, 0.25, atol=1e-4)
    assert not ok and msg == "AssertionError: 0.5 != 0.25 within 0.0001 delta (0.25 difference)"
    assert effective_atol([1.0, 2.0], 0) == 1e-6 and effective_atol([1, 2.0], 0) == 0.0 and effective_atol([], 0) == 0.0


def test_special_oracles():
    xs = [-6, 11, -6, 1]
    assert check_value(1.0, None, 1e-4, "poly_root", [xs])[0]
    ok, msg = check_value(1.5, None, 1e-4, "poly_root", [xs])
    assert not ok and msg.startswith("AssertionError:") and "not less than or equal to 0.0001" in msg
    assert abs(poly(xs, 2.0)) < 1e-12
    assert check_value((5, 4), (4, 5), oracle="set_equal")[0] and not check_value((5,), (4, 5), oracle="set_equal")[0]
    assert check_value("match", True, oracle="not_none")[0] and not check_value(None, True, oracle="not_none")[0]
