"""Test cases, jobs, limits and verdicts: the data passed between the pool and its callers.

Paper §1.4 (CodeContests stdin/stdout tests, 1 GB / 10 s defaults) and §1.6 (EvalPlus function tests).
Everything here is plain frozen data so jobs can be built anywhere (the environment, the CLI, tests)
without importing the pool.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Sequence, Union


@dataclasses.dataclass(frozen=True)
class IOCase:
    """A stdin/stdout test (CodeContests): run the program with `input` on stdin, compare stdout."""

    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class CallCase:
    """A function test (EvalPlus): call `entry_point(*args)` and compare the result.

    `args_json` is a JSON list in the value codec of `codec.py` (plain JSON decodes as itself; tuples,
    sets, non-finite floats and other types are tagged). `expected_json` is the expected value in the
    same codec; None means "no check": the case passes unless the call fails, and `CaseResult.actual`
    carries the returned value (how expected outputs are computed from a canonical solution).
    `atol` is EvalPlus's per-task float tolerance. `oracle` picks a special check: "equal" (default),
    "poly_root" (HumanEval/32: |poly(xs, result)| <= atol), "set_equal" and "not_none" (MBPP+).
    `text` is how the test is shown in feedback (paper §1.6: a unittest.TestCase assertion call).
    """

    text: str
    args_json: str
    expected_json: str | None
    atol: float = 0.0
    oracle: str = "equal"


@dataclasses.dataclass(frozen=True)
class AssertCase:
    """Assert-style test code run after the program in the same interpreter; passes when it raises nothing."""

    text: str
    code: str


Case = Union[IOCase, CallCase, AssertCase]

COMPARISONS = ("codecontests", "exact", "lines")
ORACLES = ("equal", "poly_root", "set_equal", "not_none")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-test resource limits (paper §1.4: 10 s wall clock and 1 GB memory unless the problem says).

    time_s bounds wall-clock and CPU time of each test; memory_bytes is the address-space limit;
    output_bytes caps stdout (a test writing more fails); file_bytes caps each written file (and the
    private working directory's size); processes caps processes and threads; open_files caps file
    descriptors.
    """

    time_s: float = 10.0
    memory_bytes: int = 1 << 30
    output_bytes: int = 16 << 20
    file_bytes: int = 16 << 20
    processes: int = 32
    open_files: int = 64

    def __post_init__(self):
        if not self.time_s > 0:
            raise ValueError(f"Limits.time_s must be > 0 seconds, got {self.time_s!r}")
        for name in ("memory_bytes", "output_bytes", "file_bytes", "processes", "open_files"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
        if self.memory_bytes < (64 << 20):
            raise ValueError(f"Limits.memory_bytes must be at least 64 MiB (the interpreter needs it), "
                             f"got {self.memory_bytes}")
        if self.open_files < 8:
            raise ValueError(f"Limits.open_files must be at least 8, got {self.open_files}")


@dataclasses.dataclass(frozen=True)
class Job:
    """A program and its tests. All cases must be of one kind (IOCase, or CallCase/AssertCase)."""

    program: str
    cases: Sequence[Case]
    entry_point: str | None = None
    limits: Limits = Limits()
    comparison: str = "codecontests"

    def __post_init__(self):
        if not isinstance(self.program, str):
            raise TypeError(f"Job.program must be str, got {type(self.program).__name__}")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"Job.comparison must be one of {COMPARISONS}, got {self.comparison!r}")
        object.__setattr__(self, "cases", tuple(self.cases))
        kinds = {type(c) for c in self.cases}
        for k in kinds:
            if k not in (IOCase, CallCase, AssertCase):
                raise TypeError(f"Job.cases must hold IOCase, CallCase or AssertCase, got {k.__name__}")
        if IOCase in kinds and len(kinds) > 1:
            raise ValueError("Job.cases mixes stdin/stdout tests (IOCase) with function tests; "
                             "submit them as separate jobs")
        if CallCase in kinds and not self.entry_point:
            raise ValueError("Job.entry_point is required for CallCase tests (the function to call)")
        for c in self.cases:
            if isinstance(c, CallCase) and c.oracle not in ORACLES:
                raise ValueError(f"CallCase.oracle must be one of {ORACLES}, got {c.oracle!r}")

    @property
    def kind(self) -> str:
        return "stdio" if self.cases and isinstance(self.cases[0], IOCase) else "function"


class Verdict(str, enum.Enum):
    """Per-case verdicts, plus the two per-program verdicts NO_CODE and SYNTAX_ERROR."""

    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    NO_CODE = "no_code"
    SYNTAX_ERROR = "syntax_error"


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """One test's outcome. `expected`/`actual` are stdout text (stdio) or reprs / codec JSON (function
    tests with no expected value); `error` is the cleaned traceback or assertion message."""

    verdict: Verdict
    expected: str | None = None
    actual: str | None = None
    error: str | None = None
    time_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class JobResult:
    """All case results of a job. With a program verdict (NO_CODE, SYNTAX_ERROR) every case carries it
    too, so feedback can always be rendered per case."""

    program_verdict: Verdict | None
    cases: list

    @property
    def passed(self) -> bool:
        return self.program_verdict is None and all(c.verdict == Verdict.PASSED for c in self.cases)
