"""The paper's execution-feedback messages, word for word (paper §1.2 = App. C.1, §1.6 = App. C.4/C.5).

All template strings live here so the environment imports them rather than retyping them. Inputs,
outputs and stack traces are inserted raw (trailing newlines and spaces kept, paper §1.2); the paper
does not truncate (§1.2 [U]), we do only past configurable lengths and then say so in the text.
CodeContests messages list failing tests only; EvalPlus messages list failures and successes.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from rlef_jax.execution.types import AssertCase, CaseResult, IOCase, Verdict

BACKTICKS_INSTRUCTION = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
                         "Use the backticks for your code only.")
CC_HEADER = "Your code failed the following tests:\n\n"
CC_WRONG_ANSWER = "- input `{input}` failed:\nExpected output `{expected_output}` but got `{observed_output}`\n"
CC_EXCEPTION = "- input `{input}` failed:\n{stacktrace}\n"
CC_TIMEOUT = "- input `{input}` failed: Execution took too long.\n"
CC_OUT_OF_MEMORY = "- input `{input}` failed: Out of memory.\n"
CC_FOOTER = "\nGive it another try.\n" + BACKTICKS_INSTRUCTION

EP_HEADER = "Your code failed some test cases:\n\n"
EP_ASSERTION = "- Failure: `{test}`:\n`{assertion_error}`\n"
EP_EXCEPTION = "- Failure: `{test}`:\n{stacktrace}\n"
EP_TIMEOUT = "- Failure: `{test}`:\nExecution took too long.\n"
EP_OUT_OF_MEMORY = "- Failure: `{test}`:\nOut of memory.\n"
EP_SUCCESS = "- Success: `{test}`\n"
EP_FOOTER = "\nGive it another try."
EP_FOOTER_MBPP = EP_FOOTER + "\n" + BACKTICKS_INSTRUCTION

NO_CODE_ERROR = "No Python code was found in the response."


@dataclasses.dataclass(frozen=True)
class Truncation:
    """Character limits for text inserted in feedback (None: no limit). A cut keeps the head and tail
    and inserts `[... N characters truncated ...]`. max_failures caps listed failing tests (paper App. B.3
    shows up to 8 in its richer-feedback ablation); a note says how many were left out."""

    input_chars: int | None = 2000
    output_chars: int | None = 2000
    error_chars: int | None = 4000
    max_failures: int | None = None


NO_TRUNCATION = Truncation(None, None, None, None)


def truncate(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}[... {len(text) - head - tail} characters truncated ...]{text[len(text) - tail:]}"


def _stacktrace(result: CaseResult, t: Truncation) -> str:
    if result.verdict == Verdict.NO_CODE:
        return NO_CODE_ERROR
    return truncate((result.error or "").rstrip("\n"), t.error_chars)


def _omitted(n: int) -> str:
    return f"- ({n} more failing test{'s' if n != 1 else ''} not shown)\n" if n else ""


def codecontests_feedback(cases: Sequence[IOCase], results: Sequence[CaseResult],
                          truncation: Truncation = Truncation()) -> str:
    """App. C.1's message: one block per failing test, passing tests not listed."""
    if len(cases) != len(results):
        raise ValueError(f"codecontests_feedback got {len(cases)} cases but {len(results)} results")
    lines, failures = [], 0
    for case, r in zip(cases, results):
        if r.verdict == Verdict.PASSED:
            continue
        failures += 1
        if truncation.max_failures is not None and failures > truncation.max_failures:
            continue
        inp = truncate(case.input, truncation.input_chars)
        if r.verdict == Verdict.WRONG_ANSWER:
            lines.append(CC_WRONG_ANSWER.format(input=inp,
                                                expected_output=truncate(case.output, truncation.output_chars),
                                                observed_output=truncate(r.actual or "", truncation.output_chars)))
        elif r.verdict == Verdict.TIMEOUT:
            lines.append(CC_TIMEOUT.format(input=inp))
        elif r.verdict == Verdict.OUT_OF_MEMORY:
            lines.append(CC_OUT_OF_MEMORY.format(input=inp))
        else:
            lines.append(CC_EXCEPTION.format(input=inp, stacktrace=_stacktrace(r, truncation)))
    shown = failures if truncation.max_failures is None else min(failures, truncation.max_failures)
    return CC_HEADER + "".join(lines) + _omitted(failures - shown) + CC_FOOTER


def evalplus_feedback(cases: Sequence, results: Sequence[CaseResult], trailer: bool,
                      truncation: Truncation = Truncation()) -> str:
    """App. C.4 (HumanEval+, trailer=False) / C.5 (MBPP+, trailer=True): failures and successes.

    A failed check shows its AssertionError in backticks; an exception shows the stack trace raw.
    """
    if len(cases) != len(results):
        raise ValueError(f"evalplus_feedback got {len(cases)} cases but {len(results)} results")
    lines, failures = [], 0
    for case, r in zip(cases, results):
        test = truncate(case.text, truncation.input_chars)
        if r.verdict == Verdict.PASSED:
            lines.append(EP_SUCCESS.format(test=test))
            continue
        failures += 1
        if truncation.max_failures is not None and failures > truncation.max_failures:
            continue
        if r.verdict == Verdict.WRONG_ANSWER:
            err = (r.error or "").rstrip("\n")
            if isinstance(case, AssertCase):
                err = err.splitlines()[-1] if err else "AssertionError"
            lines.append(EP_ASSERTION.format(test=test, assertion_error=truncate(err, truncation.error_chars)))
        elif r.verdict == Verdict.TIMEOUT:
            lines.append(EP_TIMEOUT.format(test=test))
        elif r.verdict == Verdict.OUT_OF_MEMORY:
            lines.append(EP_OUT_OF_MEMORY.format(test=test))
        else:
            lines.append(EP_EXCEPTION.format(test=test, stacktrace=_stacktrace(r, truncation)))
    shown = failures if truncation.max_failures is None else min(failures, truncation.max_failures)
    return EP_HEADER + "".join(lines) + _omitted(failures - shown) + (EP_FOOTER_MBPP if trailer else EP_FOOTER)
