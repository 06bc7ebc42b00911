"""CodeContests-format fixture problems: correct solutions pass every test, incorrect ones fail."""
import glob
import json
import os

import pytest

from rlef_jax.execute import codecontests_cases, codecontests_limits
from rlef_jax.execution import ExecutionPool, Job, Verdict, codecontests_feedback

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "stdio_problems", "*.json")))


@pytest.fixture(scope="module")
def pool():
    with ExecutionPool(workers=2) as p:
        yield p


def test_there_are_at_least_ten_problems():
    assert len(FIXTURES) >= 10


def test_correct_pass_and_incorrect_fail(pool):
    pending = []
    for path in FIXTURES:
        with open(path) as f:
            problem = json.load(f)
        cases = codecontests_cases(problem, "all")
        assert len(cases) >= 3
        for kind in ("solutions", "incorrect_solutions"):
            for code in problem[kind]:
                job = Job(code, cases, limits=codecontests_limits(problem))
                pending.append((problem["name"], kind, job, pool.submit(job)))
    for name, kind, job, future in pending:
        r = future.result()
        if kind == "solutions":
            assert r.passed, (name, [c for c in r.cases if c.verdict != Verdict.PASSED][:1])
        else:
            assert not r.passed, name
            msg = codecontests_feedback(job.cases, r.cases)
            assert msg.startswith("Your code failed the following tests:") and "failed" in msg


def test_limits_from_the_problem():
    with open([p for p in FIXTURES if p.endswith("gcd_pairs.json")][0]) as f:
        limits = codecontests_limits(json.load(f))
    assert limits.time_s == 2.5 and limits.memory_bytes == 256 << 20
    assert codecontests_limits({}).time_s == 10.0 and codecontests_limits({}).memory_bytes == 1 << 30
