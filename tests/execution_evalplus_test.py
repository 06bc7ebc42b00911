"""EvalPlus tasks: canonical solutions pass base and plus tests; broken ones fail (issue #3 item 8)."""
import os

import pytest

from rlef_jax.data import assets
from rlef_jax.execution import AssertCase, ExecutionPool, Job, Limits, Verdict, evalplus_feedback
from rlef_jax.execution import evalplus

HE = str(assets.benchmark_file(assets.HUMANEVAL_PLUS))  # shipped: rlef_jax/assets/benchmarks
MBPP = str(assets.benchmark_file(assets.MBPP_PLUS_PRERELEASE))
SAMPLE = ["HumanEval/0", "HumanEval/2", "HumanEval/10", "HumanEval/32", "HumanEval/53", "HumanEval/95",
          "HumanEval/100", "HumanEval/120", "HumanEval/150", "HumanEval/163"]
LIMITS = Limits(time_s=20.0, memory_bytes=4 << 30)
needs_data = pytest.mark.skipif(not os.path.exists(HE), reason="HumanEval+ data not present")


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def he_tasks():
    return {t["task_id"]: t for t in evalplus.load_tasks(HE)}


def broken(task):
    """The canonical solution with every result wrapped in a list: always a different value."""
    ep = task["entry_point"]
    return (task["prompt"] + task["canonical_solution"] +
            f"\n_orig = {ep}\ndef {ep}(*args):\n    return [_orig(*args)]\n")


def run_task(pool, task, which, expected, program):
    cases = evalplus.evalplus_cases(task, which, expected)
    return cases, pool.submit(Job(program, cases, entry_point=task["entry_point"], limits=LIMITS))


def check_tasks(pool, tasks, cache_dir):
    futures = []
    for which in ("base", "plus"):
        expected = evalplus.compute_expected(tasks, pool, which, cache_dir=str(cache_dir))
        for t in tasks:
            exp = expected[t["task_id"]]
            futures.append((t, which, "canonical", run_task(pool, t, which, exp, t["prompt"] + t["canonical_solution"])[1]))
            if which == "base":
                futures.append((t, which, "broken", run_task(pool, t, which, exp, broken(t))[1]))
    for t, which, kind, f in futures:
        r = f.result()
        if kind == "canonical":
            bad = [(i, c) for i, c in enumerate(r.cases) if c.verdict != Verdict.PASSED][:1]
            assert r.passed, (t["task_id"], which, bad)
        else:
            assert all(c.verdict != Verdict.PASSED for c in r.cases), t["task_id"]


@needs_data
def test_sample_canonical_pass_and_broken_fail(pool, he_tasks, tmp_path):
    check_tasks(pool, [he_tasks[k] for k in SAMPLE], tmp_path)


@needs_data
@pytest.mark.slow
def test_all_164_canonical_solutions_pass(pool, he_tasks, tmp_path):
    assert len(he_tasks) == 164
    check_tasks(pool, list(he_tasks.values()), tmp_path)


@needs_data
def test_feedback_text_is_a_unittest_assertion(pool, he_tasks, tmp_path):
    task = he_tasks["HumanEval/0"]
    expected = evalplus.compute_expected([task], pool, "base", cache_dir=str(tmp_path))["HumanEval/0"]
    cases = evalplus.evalplus_cases(task, "base", expected)
    assert cases[1].text == "assertEqual(has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05), False)"
    program = task["prompt"] + "    return True\n"
    r = pool.submit(Job(program, cases, entry_point="has_close_elements")).result()
    assert r.cases[1].verdict == Verdict.WRONG_ANSWER and r.cases[1].error == "AssertionError: True != False"
    msg = evalplus_feedback(cases[:2], r.cases[:2], trailer=False)
    assert msg == ("Your code failed some test cases:\n\n"
                   "- Success: `assertEqual(has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3), True)`\n"
                   "- Failure: `assertEqual(has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05), False)`:\n"
                   "`AssertionError: True != False`\n\nGive it another try.")
    # the cache is used on the second call: same values, no job needed
    assert evalplus.compute_expected([task], None, "base", cache_dir=str(tmp_path))["HumanEval/0"] == expected


@needs_data
def test_find_zero_uses_the_tolerance_oracle(pool, he_tasks, tmp_path):
    task = he_tasks["HumanEval/32"]
    expected = evalplus.compute_expected([task], pool, "base", cache_dir=str(tmp_path))["HumanEval/32"]
    cases = evalplus.evalplus_cases(task, "base", expected)
    assert cases[0].text == "assertLessEqual(abs(poly([-10, -2], find_zero([-10, -2]))), 0.0001)"
    bisection = task["prompt"] + (
        "    lo, hi = -1e4, 1e4\n    if poly(xs, lo) > 0:\n        lo, hi = hi, lo\n"
        "    for _ in range(200):\n        mid = (lo + hi) / 2\n        if poly(xs, mid) < 0:\n            lo = mid\n"
        "        else:\n            hi = mid\n    return lo\n")
    r = pool.submit(Job(bisection, cases, entry_point="find_zero")).result()
    assert r.passed, [c for c in r.cases if c.verdict != Verdict.PASSED][:1]


@pytest.mark.skipif(not os.path.exists(MBPP), reason="MBPP+ data not present")
def test_mbpp_tuples_sets_and_assertions(pool, tmp_path):
    tasks = {t["task_id"]: t for t in evalplus.load_tasks(MBPP)}
    t = tasks["Mbpp/2"]
    assert isinstance(t["base_input"][0][0], tuple)
    expected = evalplus.compute_expected([t], pool, "base", cache_dir=str(tmp_path))["Mbpp/2"]
    cases = evalplus.evalplus_cases(t, "base", expected)
    assert cases[0].oracle == "set_equal" and cases[0].text.startswith("assertEqual(set(similar_elements((3, 4, 5, 6)")
    reordered = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
    assert pool.submit(Job(reordered, cases, entry_point="similar_elements")).result().passed
    asserts = evalplus.evalplus_cases(t, "assertion")
    assert all(isinstance(c, AssertCase) for c in asserts) and len(asserts) == 3
    assert asserts[0].text == "assertEqual(similar_elements((3, 4, 5, 6), (5, 7, 4, 10)), (4, 5))"
    r = pool.submit(Job("def similar_elements(a, b):\n    return (5, 4)\n", asserts)).result()
    assert r.cases[0].verdict == Verdict.WRONG_ANSWER and "(5, 4) != (4, 5)" in r.cases[0].error


def test_bad_task_records_are_named(tmp_path):
    with pytest.raises(ValueError, match="lacks field"):
        evalplus.prepare_task({"task_id": "X/1"})
    p = tmp_path / "t.jsonl"
    p.write_text('{"task_id": 1\n')
    with pytest.raises(ValueError, match="t.jsonl:1 is not valid JSON"):
        evalplus.load_tasks(str(p))
    with pytest.raises(ValueError, match="need one expected output"):
        evalplus.evalplus_cases({"task_id": "X/1", "base_input": [[1]], "entry_point": "f", "atol": 0}, "base", [])
