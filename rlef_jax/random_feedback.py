"""Random execution feedback, the ablation of paper App. C.2 (docs/method.md §1.7).

For a problem, pick uniformly a *different* problem of the same pool that has incorrect solutions; run
one of those incorrect solutions on that problem's public tests and show the resulting feedback. If it
passes them, the program `raise NotImplementedError()` is run instead (its feedback is a traceback).

`random_feedback_job` draws the other problem and up to `random_feedback_candidates` of its incorrect
solutions in random order, followed by the fallback program; the caller runs all these jobs and
`random_feedback_text` renders the first one that fails. Taking the first failure of a uniformly
shuffled list is a uniform draw among the failing candidates, and the fallback is reached only when no
candidate fails. Early stopping still uses the true public tests of the episode's own problem.

Pools without any incorrect solutions (HumanEval+, MBPP+, the MBPP task set: the datasets ship none)
draw the other problem among those with public tests, and its feedback is the fallback's: the paper's
rule for "no incorrect solution fails", applied to "none exists" ([U]; docs/method.md §1.7).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlef_jax.env_config import EnvConfig
from rlef_jax.execution.types import Job, JobResult
from rlef_jax.problem import Problem

FALLBACK_PROGRAM = "raise NotImplementedError()"


@dataclasses.dataclass(frozen=True)
class RandomFeedback:
    """The jobs whose feedback stands in for the true one: candidates first, the fallback last."""

    problem: Problem
    jobs: tuple[Job, ...]


def random_feedback_job(problem: Problem, pool_of_problems: Sequence[Problem], rng: np.random.Generator,
                        *, env_config=None) -> RandomFeedback:
    """Draws the other problem and the programs to run on its public tests (paper App. C.2)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}.")
    config = EnvConfig.from_config(env_config)
    with_tests = [p for p in pool_of_problems if p.name != problem.name and p.public_cases]
    others = [p for p in with_tests if p.incorrect_solutions]
    if not others and not any(p.incorrect_solutions for p in pool_of_problems):
        others = with_tests  # a pool without incorrect solutions: the fallback's feedback (module docstring)
    if not others:
        raise ValueError(f"No problem other than {problem.name!r} in the pool has incorrect solutions and public "
                         "tests; random feedback (App. C.2) needs a pool such as the whole evaluation split.")
    other = others[int(rng.integers(len(others)))]
    order = rng.permutation(len(other.incorrect_solutions))[:config.random_feedback_candidates]
    programs = [other.incorrect_solutions[int(i)] for i in order] + [FALLBACK_PROGRAM]
    return RandomFeedback(problem=other, jobs=tuple(other.job(p, other.public_cases) for p in programs))


def random_feedback_text(random_feedback: RandomFeedback, results: Sequence[JobResult], *, env_config=None) -> str:
    """The feedback message of the first job in `random_feedback.jobs` that fails its tests."""
    if len(results) != len(random_feedback.jobs):
        raise ValueError(f"random_feedback_text needs one result per job ({len(random_feedback.jobs)}), got "
                         f"{len(results)}.")
    config = EnvConfig.from_config(env_config)
    for job, result in zip(random_feedback.jobs, results):
        if not result.passed:
            return random_feedback.problem.render_feedback(job.cases, result.cases, config.truncation())
    raise ValueError(f"Even {FALLBACK_PROGRAM!r} passed the public tests of {random_feedback.problem.name!r}; "
                     "its tests cannot be run as random feedback.")
