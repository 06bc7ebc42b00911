"""EvalPlus (HumanEval+ / MBPP+) tasks as function tests (paper §1.6).

* `load_tasks(path)`: jsonl or jsonl.gz with EvalPlus's fields (task_id, prompt, entry_point,
  canonical_solution, base_input, plus_input, atol, test, contract; MBPP+ also `assertion`). MBPP+
  inputs are converted like EvalPlus's `mbpp_deserialize_inputs` (JSON has no tuples or sets, so tasks
  whose functions take tuples/sets list them below); HumanEval+ inputs are used as stored (EvalPlus does
  the same), so canonical and candidate solutions both see lists.
* `compute_expected(tasks, pool)`: expected outputs, by running each task's `prompt + canonical_solution`
  (what EvalPlus's `trusted_exec` runs; the `contract` input checks are not part of it) in the sandbox,
  one batched job per task and input set, cached on disk keyed by a hash of the task.
* `evalplus_cases(task, which, expected)`: one `CallCase` per input. Its `text` is the single
  unittest.TestCase assertion shown in feedback, e.g. `assertEqual(has_close_elements([1.0, 2.0], 0.5), False)`;
  judging follows EvalPlus's `unsafe_execute` (see `compare.check_value`), and a failure reads like that
  assertion's AssertionError (`AssertionError: True != False`).
Quirks handled: HumanEval/32 (`find_zero`) has no unique answer; its EvalPlus check (and the tolerance
check in its `test` code) is |poly(xs, result)| <= atol, shown as `assertLessEqual(abs(poly(...)), atol)`.
MBPP+'s set-equality and not-None tasks use EvalPlus's special oracles; its few ad-hoc oracles (Mbpp/164,
295, 558, 581) are not reproduced and fall back to equality. `which="assertion"` splits MBPP+'s original
asserts into `AssertCase`s rewritten as unittest calls.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
from typing import Sequence

from rlef_jax.execution import codec
from rlef_jax.execution.types import AssertCase, CallCase, Job, Limits, Verdict

REQUIRED = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
MBPP_SET_EQUAL = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                  "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}
MBPP_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}


def load_tasks(path: str) -> list[dict]:
    """EvalPlus tasks from a .jsonl or .jsonl.gz file; raises ValueError naming a malformed line."""
    opener = gzip.open if path.endswith(".gz") else open
    if not os.path.exists(path):
        raise FileNotFoundError(f"EvalPlus task file {path!r} does not exist")
    tasks = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    task = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON ({e})") from None
                tasks.append(prepare_task(task, where=f"{path}:{n}"))
    return tasks


def prepare_task(task: dict, where: str = "task") -> dict:
    """Validate one EvalPlus record and deserialise its inputs (MBPP+ tuples/sets)."""
    missing = [k for k in REQUIRED if k not in task]
    if missing:
        raise ValueError(f"{where}: EvalPlus task lacks field(s) {missing}; expected {list(REQUIRED)}")
    task = dict(task, atol=float(task.get("atol") or 0.0))
    if task["task_id"].startswith("Mbpp/"):
        num = int(task["task_id"].split("/")[-1])
        task["base_input"] = mbpp_deserialize(num, task["base_input"])
        task["plus_input"] = mbpp_deserialize(num, task["plus_input"])
    return task


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


_MBPP_RULES = {
    **dict.fromkeys([2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630,
                     726, 740, 744, 809], lambda inp: [tuple(a) for a in inp]),
    **dict.fromkeys([63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780],
                    lambda inp: [[tuple(x) for x in a] for a in inp]),
    **dict.fromkeys([75, 413, 444, 753], lambda inp: [[tuple(x) for x in inp[0]]] + list(inp[1:])),
    **dict.fromkeys([106, 750], lambda inp: [inp[0], tuple(inp[1])] + list(inp[2:])),
    115: lambda inp: [[set(x) if isinstance(x, list) and x else {} for x in inp[0]]],
    124: lambda inp: [float(inp[0]), complex(inp[1])],
    **dict.fromkeys([250, 405, 446, 617, 720, 763, 808], lambda inp: [tuple(inp[0])] + list(inp[1:])),
    **dict.fromkeys([259, 401, 445], lambda inp: [tuple(tuple(x) for x in a) for a in inp]),
    278: lambda inp: [tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])] + list(inp[1:]),
    307: lambda inp: [tuple(inp[0])] + list(inp[1:]),
    722: lambda inp: [{k: tuple(v) for k, v in inp[0].items()}] + list(inp[1:]),
    252: lambda inp: [complex(inp[0])],
    **dict.fromkeys([580, 615, 791], lambda inp: list(_tuples(inp))),
}


def mbpp_deserialize(task_num: int, inputs: list) -> list:
    """MBPP+ inputs whose functions take tuples/sets/complex numbers, rebuilt from their JSON lists."""
    rule = _MBPP_RULES.get(task_num)
    return [rule(inp) for inp in inputs] if rule else inputs


def oracle_for(task: dict) -> str:
    ep = task["entry_point"]
    if task["task_id"] == "HumanEval/32":
        return "poly_root"
    if task["task_id"].startswith("Mbpp/") and ep in MBPP_SET_EQUAL:
        return "set_equal"
    if task["task_id"].startswith("Mbpp/") and ep in MBPP_NOT_NONE:
        return "not_none"
    return "equal"


def _call_text(entry_point: str, args) -> str:
    return f"{entry_point}({', '.join(codec.safe_repr(a) for a in args)})"


def case_text(task: dict, args, expected) -> str:
    """The unittest.TestCase assertion a test is shown as (paper §1.6)."""
    call, oracle = _call_text(task["entry_point"], args), oracle_for(task)
    if oracle == "poly_root":
        return f"assertLessEqual(abs(poly({codec.safe_repr(args[0])}, {call})), {task['atol']!r})"
    if oracle == "set_equal":
        return f"assertEqual(set({call}), set({codec.safe_repr(expected)}))"
    if oracle == "not_none":
        return f"assertEqual({call} is not None, {codec.safe_repr(expected)})"
    from rlef_jax.execution.compare import effective_atol
    tol = effective_atol(expected, task["atol"])
    if tol and isinstance(expected, float):
        return f"assertAlmostEqual({call}, {codec.safe_repr(expected)}, delta={tol!r})"
    return f"assertEqual({call}, {codec.safe_repr(expected)})"


def evalplus_cases(task: dict, which: str = "base", expected: Sequence[str] | None = None) -> list:
    """Test cases for `task`. which: "base" (feedback tests, §1.6), "plus" (scoring tests) or
    "assertion" (MBPP+'s original asserts as AssertCases). `expected`: codec-JSON expected outputs, one
    per input (from `compute_expected`); required for "base"/"plus"."""
    if which == "assertion":
        return assertion_cases(task)
    if which not in ("base", "plus"):
        raise ValueError(f"which must be 'base', 'plus' or 'assertion', got {which!r}")
    inputs = task[f"{which}_input"]
    if expected is None or len(expected) != len(inputs):
        raise ValueError(f"{task['task_id']}: need one expected output per {which} input ({len(inputs)}), got "
                         f"{None if expected is None else len(expected)}; compute them with compute_expected()")
    cases = []
    for args, exp_json in zip(inputs, expected):
        exp = codec.loads(exp_json)
        cases.append(CallCase(text=case_text(task, args, exp), args_json=codec.dumps(list(args)),
                              expected_json=exp_json, atol=task["atol"], oracle=oracle_for(task)))
    return cases


def assertion_cases(task: dict) -> list[AssertCase]:
    """MBPP+ `assertion` split into one case per assert, each rewritten as a unittest call."""
    if not task.get("assertion"):
        raise ValueError(f"{task['task_id']} has no 'assertion' field (only MBPP+ tasks do)")
    return [_assert_node_case(node) for node in ast.parse(task["assertion"]).body
            if isinstance(node, ast.Assert)]


def _assert_node_case(node: ast.Assert, setup: str = "") -> AssertCase:
    text = unittest_form(node)
    prefix = f"{setup}\n" if setup else ""
    return AssertCase(text=text, code=f"{prefix}import unittest as _ut\n_ut.TestCase().{text}\n")


def assert_case(statement: str, *, setup: str = "", where: str = "test") -> AssertCase:
    """One `assert` statement as an AssertCase shown and run as its unittest call (paper §1.6);
    `setup` (e.g. MBPP's `test_setup_code`) runs before it."""
    try:
        body = ast.parse(statement.strip()).body
    except SyntaxError as e:
        raise ValueError(f"{where}: test {statement[:80]!r} is not valid Python ({e.msg}).") from None
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        raise ValueError(f"{where}: test {statement[:80]!r} must be a single assert statement.")
    return _assert_node_case(body[0], setup)


def unittest_form(node: ast.Assert) -> str:
    """`assert a == b` -> `assertEqual(a, b)`, `assert x` -> `assertTrue(x)`, and so on."""
    test = node.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        method = {ast.Eq: "assertEqual", ast.NotEq: "assertNotEqual", ast.Lt: "assertLess",
                  ast.LtE: "assertLessEqual", ast.Gt: "assertGreater", ast.GtE: "assertGreaterEqual",
                  ast.Is: "assertIs", ast.IsNot: "assertIsNot", ast.In: "assertIn",
                  ast.NotIn: "assertNotIn"}.get(type(test.ops[0]))
        if method:
            return f"{method}({ast.unparse(test.left)}, {ast.unparse(test.comparators[0])})"
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return f"assertFalse({ast.unparse(test.operand)})"
    return f"assertTrue({ast.unparse(test)})"


def _task_key(task: dict, which: str) -> str:
    blob = json.dumps([task["task_id"], task["prompt"], task["canonical_solution"], task["entry_point"],
                       codec.dumps(list(task[f"{which}_input"]))], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rlef_jax",
                        "evalplus_expected")


def compute_expected(tasks: Sequence[dict], pool, which: str = "base", cache_dir: str | None = None,
                     limits: Limits = Limits(time_s=20.0, memory_bytes=4 << 30)) -> dict[str, list[str]]:
    """{task_id: [codec-JSON expected output per input]}, by running the canonical solutions in `pool`.

    Raises RuntimeError naming the task and input when a canonical solution fails (data error).
    """
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    out, pending = {}, {}
    for task in tasks:
        path = os.path.join(cache_dir, _task_key(task, which) + ".json")
        if os.path.exists(path):
            with open(path) as f:
                out[task["task_id"]] = json.load(f)
            continue
        cases = [CallCase(text="", args_json=codec.dumps(list(a)), expected_json=None) for a in task[f"{which}_input"]]
        job = Job(task["prompt"] + task["canonical_solution"], cases, entry_point=task["entry_point"], limits=limits)
        pending[task["task_id"]] = (task, path, pool.submit(job))
    for task_id, (task, path, future) in pending.items():
        result = future.result()
        bad = [(i, r) for i, r in enumerate(result.cases) if r.verdict != Verdict.PASSED]
        if result.program_verdict is not None or bad:
            i, r = bad[0] if bad else (0, result.cases[0])
            raise RuntimeError(f"{task_id}: canonical solution failed on {which} input {i}: {r.verdict.value} "
                               f"{(r.error or '')[-500:]}")
        values = [r.actual for r in result.cases]
        if task["task_id"].startswith("Mbpp/") and task["entry_point"] in MBPP_NOT_NONE:
            values = [codec.dumps(codec.loads(v) is not None) for v in values]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(values, f)
        os.replace(tmp, path)
        out[task_id] = values
    return out
