"""Sandboxed execution of generated programs and the paper's execution feedback (paper §1.2, §1.4, §1.6).

Importing this package does not import JAX.
"""
from rlef_jax.execution import feedback
from rlef_jax.execution.compare import check_value, outputs_match
from rlef_jax.execution.feedback import Truncation, codecontests_feedback, evalplus_feedback
from rlef_jax.execution.pool import ExecutionPool
from rlef_jax.execution.types import (AssertCase, CallCase, CaseResult, IOCase, Job, JobResult, Limits,
                                      Verdict)

__all__ = ["AssertCase", "CallCase", "CaseResult", "ExecutionPool", "IOCase", "Job", "JobResult", "Limits",
           "Truncation", "Verdict", "check_value", "codecontests_feedback", "evalplus_feedback", "feedback",
           "outputs_match"]
