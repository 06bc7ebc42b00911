"""Run a solution on a problem's tests in the sandbox: `python -m rlef_jax.execute --problem P.json --code S.py`.

PROBLEM.json uses CodeContests' field names (`public_tests`, `private_tests`, `generated_tests`, each
`{"input": [...], "output": [...]}`; optional `time_limit` `{"seconds", "nanos"}` and `memory_limit_bytes`)
or EvalPlus's task fields (`task_id`, `prompt`, `entry_point`, `canonical_solution`, `base_input`, ...;
public = base inputs, private = plus inputs). Prints each test's verdict and the paper's feedback message
(§1.2 / §1.6). Exit status 0 whenever the program could be judged; 2 with one message for bad input or
when no sandbox may run here (the weak one needs --allow-weak-isolation).
Does not import JAX.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from rlef_jax.execution import evalplus
from rlef_jax.execution.feedback import Truncation, codecontests_feedback, evalplus_feedback
from rlef_jax.execution.pool import ExecutionPool
from rlef_jax.execution.types import IOCase, Job, Limits

DEFAULT_LIMITS = Limits()


class InputError(Exception):
    """A malformed problem or solution file."""


def codecontests_limits(problem: dict) -> Limits:
    """The problem's limits (paper §1.4), else 10 s and 1 GiB."""
    kw = {}
    tl = problem.get("time_limit")
    if tl:
        if not isinstance(tl, dict):
            raise InputError("`time_limit` must be an object {\"seconds\": s, \"nanos\": n} or null")
        seconds = float(tl.get("seconds", 0) or 0) + float(tl.get("nanos", 0) or 0) * 1e-9
        if seconds > 0:
            kw["time_s"] = seconds
    mem = problem.get("memory_limit_bytes")
    if mem:
        if not isinstance(mem, int) or mem < 0:
            raise InputError("`memory_limit_bytes` must be a non-negative integer")
        kw["memory_bytes"] = max(mem, 64 << 20)
    return dataclasses.replace(DEFAULT_LIMITS, **kw)


def codecontests_cases(problem: dict, which: str) -> list[IOCase]:
    names = {"public": ["public_tests"], "private": ["private_tests"], "generated": ["generated_tests"],
             "all": ["public_tests", "private_tests", "generated_tests"]}[which]
    cases = []
    for name in names:
        tests = problem.get(name) or {"input": [], "output": []}
        if not isinstance(tests, dict) or not isinstance(tests.get("input"), list) \
                or not isinstance(tests.get("output"), list) or len(tests["input"]) != len(tests["output"]):
            raise InputError(f"`{name}` must be {{\"input\": [...], \"output\": [...]}} with lists of equal length")
        cases += [IOCase(str(i), str(o)) for i, o in zip(tests["input"], tests["output"])]
    return cases


def build(problem: dict, code: str, which: str, pool: ExecutionPool):
    """(job, render) for a CodeContests or EvalPlus problem."""
    if "entry_point" in problem:
        try:
            task = evalplus.prepare_task(problem, where="--problem")
        except ValueError as e:
            raise InputError(str(e)) from None
        if which == "generated":
            raise InputError("EvalPlus problems have no generated tests; use --tests public|private|all")
        sets = {"public": ["base"], "private": ["plus"], "all": ["base", "plus"]}[which]
        cases = []
        for s in sets:
            expected = evalplus.compute_expected([task], pool, s)[task["task_id"]]
            cases += evalplus.evalplus_cases(task, s, expected)
        trailer = task["task_id"].startswith("Mbpp/")
        job = Job(code, cases, entry_point=task["entry_point"], limits=Limits(time_s=DEFAULT_LIMITS.time_s, memory_bytes=4 << 30))
        return job, lambda r: evalplus_feedback(job.cases, r.cases, trailer=trailer, truncation=Truncation())
    if not any(k in problem for k in ("public_tests", "private_tests", "generated_tests")):
        raise InputError("--problem has neither CodeContests fields (public_tests/private_tests/generated_tests) "
                         "nor EvalPlus fields (entry_point, ...)")
    job = Job(code, codecontests_cases(problem, which), limits=codecontests_limits(problem))
    return job, lambda r: codecontests_feedback(job.cases, r.cases)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlef_jax.execute", description=__doc__.split("\n")[0])
    parser.add_argument("--problem", required=True, help="problem JSON (CodeContests or EvalPlus fields)")
    parser.add_argument("--code", required=True, help="Python solution file")
    parser.add_argument("--tests", default="public", choices=["public", "private", "generated", "all"])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "unshare", "weak"])
    parser.add_argument("--allow-weak-isolation", action="store_true",
                        help="permit the weak sandbox (no network/filesystem isolation) when bwrap and unshare "
                             "do not work, or with --sandbox=weak; only for trusted code")
    args = parser.parse_args(argv)
    try:
        try:
            with open(args.problem, encoding="utf-8") as f:
                problem = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read --problem {args.problem!r}: {e}") from None
        if not isinstance(problem, dict):
            raise InputError(f"--problem {args.problem!r} must hold a JSON object")
        try:
            with open(args.code, encoding="utf-8") as f:
                code = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read --code {args.code!r}: {e}") from None
        try:
            pool = ExecutionPool(workers=1, sandbox=args.sandbox, allow_weak=args.allow_weak_isolation)
        except RuntimeError as e:  # no sandbox that may run here (the message names the fix)
            raise InputError(str(e)) from None
        with pool:
            job, render = build(problem, code, args.tests, pool)
            result = pool.submit(job).result()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    message = render(result) if not result.passed else ""
    if args.json:
        print(json.dumps({"passed": result.passed,
                          "program_verdict": result.program_verdict and result.program_verdict.value,
                          "tests": [dict(dataclasses.asdict(r), verdict=r.verdict.value) for r in result.cases],
                          "feedback": message}, indent=1))
    else:
        for i, r in enumerate(result.cases):
            print(f"test {i}: {r.verdict.value} ({r.time_s * 1000:.1f} ms)")
        print(f"passed: {result.passed}")
        if message:
            print("\n" + message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
