"""`Problem`: everything an episode needs from one dataset record (docs/DESIGN.md "Data records").

Test roles (paper §1.4–1.6): CodeContests / synthetic public tests give the in-loop feedback and decide
early stopping, private (+ generated) tests score the final solution; for HumanEval+ / MBPP+ the EvalPlus
"base" inputs play the public role and the "plus" inputs the private one. Which message renders the
feedback also follows the source (App. C.1 for CodeContests-style, C.4 / C.5 for EvalPlus).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from rlef_jax import prompts
from rlef_jax.data import records
from rlef_jax.env_config import EnvConfig
from rlef_jax.execution import evalplus, feedback
from rlef_jax.execution.types import CaseResult, IOCase, Job, Limits

STDIO_SOURCES = (prompts.CODE_CONTESTS, prompts.SYNTHETIC)
EVALPLUS_SOURCES = (prompts.HUMANEVAL_PLUS, prompts.MBPP_PLUS)
ASSERT_SOURCES = (prompts.MBPP,)  # tests are assert statements (rlef_jax/data/mbpp.py)
MBPP_PROMPT_SOURCES = (prompts.MBPP_PLUS, prompts.MBPP)  # App. C.5 prompt and feedback (with the trailer)
MIN_MEMORY_BYTES = 64 << 20  # the executor's floor (Limits); a smaller CodeContests limit is raised to it


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem, ready for the environment: prompt messages, test cases, limits."""

    name: str
    source: str
    messages: tuple
    prefill: str | None
    public_cases: tuple
    private_cases: tuple
    generated_cases: tuple
    entry_point: str | None
    limits: Limits
    incorrect_solutions: tuple[str, ...]

    @classmethod
    def from_record(cls, source: str, record: Mapping, *, env_config=None,
                    expected_outputs: Mapping[str, Sequence[str]] | None = None) -> "Problem":
        """Builds a problem from a decoded record of `source` (one of `prompts.SOURCES`).

        EvalPlus records need `expected_outputs={"base": [...], "plus": [...]}`: the codec-JSON outputs of
        the canonical solution per input (`rlef_jax.execution.evalplus.compute_expected`).
        """
        config = EnvConfig.from_config(env_config)
        if source in STDIO_SOURCES:
            return cls._from_contest_record(source, record, config)
        if source in EVALPLUS_SOURCES:
            return cls._from_evalplus_record(source, record, config, expected_outputs)
        if source in ASSERT_SOURCES:
            return cls._from_assert_record(source, record, config)
        raise ValueError(f"Unknown problem source {source!r}; expected one of {prompts.SOURCES}.")

    @classmethod
    def _from_contest_record(cls, source, record, config: EnvConfig) -> "Problem":
        where = f"{source} record {record.get('name')!r}"
        record = records.validate_contest_record(record, where=where)

        def cases(field):
            tests = record[field]
            return tuple(IOCase(i, o) for i, o in zip(tests["input"], tests["output"]))

        public, private = cases("public_tests"), cases("private_tests")
        if not public or not private:
            raise ValueError(f"{where} has {len(public)} public and {len(private)} private tests; the "
                             "environment needs both (the paper drops such problems, §4): filter them out.")
        messages, prefill = prompts.initial_messages(source, record)
        time_s = records.time_limit_seconds(record) or config.default_time_s
        memory = max(record["memory_limit_bytes"] or config.default_memory_bytes, MIN_MEMORY_BYTES)
        return cls(name=record["name"], source=source, messages=tuple(messages), prefill=prefill,
                   public_cases=public, private_cases=private, generated_cases=cases("generated_tests"),
                   entry_point=None, limits=Limits(time_s=float(time_s), memory_bytes=int(memory)),
                   incorrect_solutions=tuple(record["incorrect_solutions"]))

    @classmethod
    def _from_evalplus_record(cls, source, record, config: EnvConfig, expected_outputs) -> "Problem":
        task = evalplus.prepare_task(dict(record), where=f"{source} record {record.get('task_id')!r}")
        if expected_outputs is None or not {"base", "plus"} <= set(expected_outputs):
            raise ValueError(
                f"{source} record {task['task_id']!r} needs expected_outputs={{'base': [...], 'plus': [...]}} "
                "(compute them with rlef_jax.execution.evalplus.compute_expected).")
        messages, prefill = prompts.initial_messages(source, record)
        if prefill is not None and config.prefill_format == "fenced":
            prefill = "```python\n" + prefill
        return cls(
            name=task["task_id"], source=source, messages=tuple(messages), prefill=prefill,
            public_cases=tuple(evalplus.evalplus_cases(task, "base", expected_outputs["base"])),
            private_cases=tuple(evalplus.evalplus_cases(task, "plus", expected_outputs["plus"])),
            generated_cases=(), entry_point=task["entry_point"],
            limits=Limits(time_s=float(config.default_time_s), memory_bytes=config.default_memory_bytes),
            incorrect_solutions=())

    @classmethod
    def _from_assert_record(cls, source, record, config: EnvConfig) -> "Problem":
        where = f"{source} record {record.get('name')!r}"
        record = records.validate_mbpp_record(record, where=where)
        setup = record["test_setup_code"].replace("\r\n", "\n").strip()

        def cases(field):
            return tuple(evalplus.assert_case(test, setup=setup, where=where) for test in record[field])

        messages, prefill = prompts.initial_messages(source, record)
        memory = max(record["memory_limit_bytes"] or config.default_memory_bytes, MIN_MEMORY_BYTES)
        return cls(name=record["name"], source=source, messages=tuple(messages), prefill=prefill,
                   public_cases=cases("public_tests"), private_cases=cases("private_tests"),
                   generated_cases=cases("generated_tests"), entry_point=None,
                   limits=Limits(time_s=float(config.default_time_s), memory_bytes=int(memory)),
                   incorrect_solutions=tuple(record["incorrect_solutions"]))

    def job(self, program: str, cases: Sequence) -> Job:
        """A job running `program` on `cases` under this problem's limits."""
        return Job(program=program, cases=tuple(cases), entry_point=self.entry_point, limits=self.limits)

    def render_feedback(self, cases: Sequence, results: Sequence[CaseResult],
                        truncation: feedback.Truncation) -> str:
        """The paper's feedback message for `results` on `cases` (App. C.1, C.4, C.5 by source)."""
        if self.source in STDIO_SOURCES:
            return feedback.codecontests_feedback(cases, results, truncation)
        return feedback.evalplus_feedback(cases, results, trailer=self.source in MBPP_PROMPT_SOURCES,
                                          truncation=truncation)

    def retry_message(self) -> str:
        """The follow-up without feedback (§5.7 ablation): the feedback message's closing lines only."""
        if self.source in STDIO_SOURCES:
            footer = feedback.CC_FOOTER
        elif self.source in MBPP_PROMPT_SOURCES:
            footer = feedback.EP_FOOTER_MBPP
        else:
            footer = feedback.EP_FOOTER
        return footer.lstrip("\n")


def from_examples(examples: Sequence[Mapping], *, env_config=None, pool=None,
                  cache_dir: str | None = None) -> list[Problem]:
    """Problems for decoded dataset examples (`{"source", "problem", ...}`, `records.decode_example`).

    EvalPlus examples (HumanEval+, MBPP+) need the expected output of every base and plus input: they are
    computed by running each task's canonical solution in `pool` (all tasks at once), once per task:
    the values are cached on disk (`evalplus.compute_expected`, keyed by a hash of the task).
    """
    tasks = [evalplus.prepare_task(dict(e["problem"]), where=f"{e['source']} record {e['problem'].get('task_id')!r}")
             for e in examples if e["source"] in EVALPLUS_SOURCES]
    expected = {}
    if tasks:
        if pool is None:
            raise ValueError("EvalPlus problems need an ExecutionPool to compute their expected outputs "
                             "(pass pool=...).")
        base = evalplus.compute_expected(tasks, pool, "base", cache_dir=cache_dir)
        plus = evalplus.compute_expected(tasks, pool, "plus", cache_dir=cache_dir)
        expected = {t["task_id"]: {"base": base[t["task_id"]], "plus": plus[t["task_id"]]} for t in tasks}
    return [Problem.from_record(e["source"], e["problem"], env_config=env_config,
                                expected_outputs=expected.get(e["problem"].get("task_id"))
                                if e["source"] in EVALPLUS_SOURCES else None)
            for e in examples]
