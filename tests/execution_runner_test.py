"""Per-test hygiene of the forking runner and its value channel (issue #3 items 4 and 9).

The runner's fast path (environment set once in the runner, rlimits computed before fork, reports
batched per poll round, values embedded in reports as JSON) must keep every per-test guarantee: each
test starts from the same clean state whatever the previous test in the same sandbox did.
"""
import json
import math

import pytest

from rlef_jax.execution import CallCase, ExecutionPool, IOCase, Job, Limits, Verdict, codec
from rlef_jax.execution.sandbox import bwrap_works, unshare_works

MODES = [m for m, works in (("bwrap", bwrap_works), ("unshare", unshare_works)) if works()] + ["weak"]

# Test 1 of each job dirties everything it can reach; test 2 reports what it sees.
DIRTY_THEN_LOOK = """
import os, sys, signal, resource, json
if input() == "dirty":
    os.environ["RLEF_LEAK"] = "1"
    os.environ["HOME"] = "/nowhere"
    del os.environ["PATH"]
    open("left_behind.txt", "w").write("x")
    os.mkdir("sub"); open("sub/f", "w").write("y"); os.chmod("sub", 0o500)
    sys.modules["json"].LEAK = 1
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_NOFILE, (8, 8))
    __builtins__.LEAK = 1 if not isinstance(__builtins__, dict) else None
    os.umask(0o077)
    print("dirtied")
else:
    print(json.dumps({"env": dict(os.environ), "files": sorted(os.listdir(".")), "cwd_is_home": os.getcwd() == os.environ.get("HOME"),
                      "json_leak": hasattr(json, "LEAK"), "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                      "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "builtins_leak": hasattr(__builtins__, "LEAK"),
                      "umask": os.umask(0o022)}, sort_keys=True))
"""


@pytest.fixture(scope="module", params=MODES)
def pool(request):
    with ExecutionPool(workers=1, sandbox=request.param, allow_weak=request.param == "weak") as p:
        yield p


def _look(pool, first):
    r = pool.submit(Job(DIRTY_THEN_LOOK, [IOCase(first, ""), IOCase("look\n", "")],
                        limits=Limits(time_s=5.0))).result(timeout=60)
    assert r.cases[0].verdict == Verdict.WRONG_ANSWER, r.cases[0]
    assert r.cases[1].verdict == Verdict.WRONG_ANSWER, r.cases[1]
    return json.loads(r.cases[1].actual)


def test_a_dirty_test_leaves_nothing_for_the_next(pool):
    clean, after_dirty = _look(pool, "look\n"), _look(pool, "dirty\n")
    assert after_dirty == clean
    assert clean["files"] == [] and clean["cwd_is_home"] and not clean["json_leak"]
    assert clean["sigterm_default"] and clean["nofile"] == Limits().open_files and not clean["builtins_leak"]
    assert clean["umask"] == 0o022
    assert set(clean["env"]) == {"PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                 "MKL_NUM_THREADS", "PYTHONIOENCODING", "HOME", "TMPDIR"}
    assert clean["env"]["TMPDIR"] == clean["env"]["HOME"]


VALUES = [(1, 2), {3, 1, 2}, frozenset(), {1: "a", (2, 3): None}, math.nan, -math.inf, 2 ** 5000, b"\x00\xff",
          1 + 2j, [[("a", 1.5)]], {"k": [True, None]}, "x" * 100_000, "", 0.1, -0]


def test_returned_values_round_trip_exactly(pool):
    program = "def f(i):\n    return VALUES[i]\n" + f"import math\nVALUES = {VALUES_SOURCE}\n"
    cases = [CallCase(text=f"f({i})", args_json=json.dumps([i]), expected_json=None) for i in range(len(VALUES))]
    r = pool.submit(Job(program, cases, entry_point="f")).result(timeout=60)
    for value, case in zip(VALUES, r.cases):
        assert case.verdict == Verdict.PASSED, case
        assert case.actual == codec.dumps(value)
    # nan != nan, as in EvalPlus (np.allclose without equal_nan), so it only round-trips above.
    checked = [CallCase(text=f"f({i})", args_json=json.dumps([i]), expected_json=codec.dumps(v))
               for i, v in enumerate(VALUES) if v == v]
    r = pool.submit(Job(program, checked, entry_point="f")).result(timeout=60)
    assert [c.verdict for c in r.cases] == [Verdict.PASSED] * (len(VALUES) - 1)
    wrong = [CallCase(text="f(0)", args_json="[0]", expected_json=codec.dumps((1, 3)))]
    assert pool.submit(Job(program, wrong, entry_point="f")).result(timeout=60).cases[0].verdict == Verdict.WRONG_ANSWER


VALUES_SOURCE = ("[(1, 2), {3, 1, 2}, frozenset(), {1: 'a', (2, 3): None}, math.nan, -math.inf, 2 ** 5000, "
                 "b'\\x00\\xff', 1 + 2j, [[('a', 1.5)]], {'k': [True, None]}, 'x' * 100_000, '', 0.1, -0]")
