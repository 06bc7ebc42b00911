"""Turning the runner's raw reports into verdicts (paper §1.2: wrong answer, exception, timeout, OOM).

The runner only says what the program did; all judging (comparison with expected outputs included)
happens here, in the host. The runner authenticates every report of a test child (see "Result channel"
in `_runner.py`), so lines a program writes itself cannot forge a pass.
"""
from __future__ import annotations

import json
import signal

from rlef_jax.execution import codec
from rlef_jax.execution.compare import check_value, outputs_match
from rlef_jax.execution.types import AssertCase, CallCase, CaseResult, IOCase, Job, Verdict

EARLY_EXIT = "The program exited (status {}) before the test's checks ran."
# A SIGKILL or SIGABRT counts as out of memory only when the child's peak resident memory (wait4's
# ru_maxrss) reached this share of its memory limit (rlimits make allocations fail rather than kill;
# a kill at the limit comes from an OOM killer, an abort from a failed allocation in C code).
OOM_PEAK_SHARE = 0.9


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _process_verdict(job: Job, msg: dict) -> CaseResult | None:
    """Verdicts every kind of test shares: timeouts, signals, output overflow, exceptions."""
    t = msg.get("time_s", 0.0)
    outcome = msg.get("outcome")
    if outcome == "timeout":
        return CaseResult(Verdict.TIMEOUT, error="Execution took too long.", time_s=t)
    if outcome == "output_limit":
        return CaseResult(Verdict.RUNTIME_ERROR, time_s=t,
                          error=f"Output limit exceeded: the program wrote more than {job.limits.output_bytes} bytes.")
    if outcome == "garbled":
        return CaseResult(Verdict.RUNTIME_ERROR, time_s=t, error="The program corrupted the test harness's channel.")
    if "tb" in msg:
        verdict = Verdict.OUT_OF_MEMORY if msg.get("oom") else Verdict.RUNTIME_ERROR
        if verdict == Verdict.RUNTIME_ERROR and msg.get("exc") == "AssertionError" and outcome == "reported":
            verdict = Verdict.WRONG_ANSWER
        return CaseResult(verdict, error="Out of memory." if msg.get("oom") else msg["tb"], time_s=t)
    if "signal" in msg:
        sig = msg["signal"]
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and msg.get("cpu_s", 0.0) >= job.limits.time_s):
            return CaseResult(Verdict.TIMEOUT, error="Execution took too long.", time_s=t)
        if sig in (signal.SIGKILL, signal.SIGABRT) and \
                msg.get("maxrss", 0) >= OOM_PEAK_SHARE * job.limits.memory_bytes:
            return CaseResult(Verdict.OUT_OF_MEMORY, error="Out of memory.", time_s=t)
        err = f"Process killed by {_signal_name(sig)}" + (" (stack overflow?)" if sig == signal.SIGSEGV else "")
        return CaseResult(Verdict.RUNTIME_ERROR, error=err + _tail(msg.get("stderr")), time_s=t)
    return None


def _tail(stderr: str | None) -> str:
    return f"\n{stderr}" if stderr else ""


def judge_case(job: Job, case, msg: dict) -> CaseResult:
    """One CaseResult from the runner's report `msg` about `case`."""
    t = msg.get("time_s", 0.0)
    early = _process_verdict(job, msg)
    if early is not None:
        return early
    if isinstance(case, IOCase):
        code = msg.get("exit_code", 0)
        if code != 0:
            return CaseResult(Verdict.RUNTIME_ERROR, error=msg.get("stderr") or f"Exit status {code}.", time_s=t)
        actual = msg.get("stdout", "")
        ok = outputs_match(case.output, actual, job.comparison)
        return CaseResult(Verdict.PASSED if ok else Verdict.WRONG_ANSWER, expected=case.output, actual=actual, time_s=t)
    if msg.get("outcome") != "reported":
        status = msg.get("exit_code", 0)
        return CaseResult(Verdict.RUNTIME_ERROR, error=EARLY_EXIT.format(status) + _tail(msg.get("stderr")), time_s=t)
    if isinstance(case, AssertCase) != ("ok" in msg) or (isinstance(case, CallCase) and "value" not in msg):
        return CaseResult(Verdict.RUNTIME_ERROR, time_s=t, error="The program corrupted the test harness's channel.")
    if isinstance(case, AssertCase):
        return CaseResult(Verdict.PASSED, time_s=t)
    if case.expected_json is None:
        return CaseResult(Verdict.PASSED, actual=json.dumps(msg["value"], allow_nan=False), time_s=t)
    actual = codec.decode(msg["value"])
    expected = codec.loads(case.expected_json)
    args = codec.loads(case.args_json) if case.oracle == "poly_root" else ()
    ok, message = check_value(actual, expected, case.atol, case.oracle, args)
    if ok:
        return CaseResult(Verdict.PASSED, expected=codec.safe_repr(expected), actual=codec.safe_repr(actual), time_s=t)
    return CaseResult(Verdict.WRONG_ANSWER, expected=codec.safe_repr(expected), actual=codec.safe_repr(actual), error=message, time_s=t)


def job_message(job: Job) -> dict:
    """What the runner receives: the program and test inputs only, never expected outputs."""
    limits = {k: getattr(job.limits, k) for k in
              ("time_s", "memory_bytes", "output_bytes", "file_bytes", "processes", "open_files")}
    if job.kind == "stdio":
        cases = [c.input for c in job.cases]
    else:
        cases = [{"args": c.args_json} if isinstance(c, CallCase) else {"code": c.code} for c in job.cases]
    return {"kind": job.kind, "program": job.program, "entry_point": job.entry_point, "cases": cases,
            "limits": limits}
