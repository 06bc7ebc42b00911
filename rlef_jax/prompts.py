"""The paper's initial prompts, word for word (paper §1.2 = App. C.1, §1.6 = App. C.4/C.5).

`initial_messages(source, record)` turns one data record (see docs/DESIGN.md "Data records"; `source` is
the TFDS builder name) into the first user turn and, for HumanEval+, the text the assistant turn is
prefilled with. There is no system message (paper §1.1 [I]). Feedback messages live in
`rlef_jax.execution.feedback`; the per-assert split of EvalPlus tests in `rlef_jax.execution.evalplus`.
"""
from __future__ import annotations

import ast
import string
from collections.abc import Mapping

CODE_CONTESTS = "code_contests"
HUMANEVAL_PLUS = "humaneval_plus"
MBPP_PLUS = "mbpp_plus"
MBPP = "mbpp"  # MBPP train/validation as an RL task set (rlef_jax/data/mbpp.py)
SYNTHETIC = "synthetic"
SOURCES = (CODE_CONTESTS, HUMANEVAL_PLUS, MBPP_PLUS, MBPP, SYNTHETIC)

BACKTICKS_INSTRUCTION = (
    "Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
    "Use the backticks for your code only."
)

# App. C.1. The "." after ${problem} is the paper's (hence the ".." in its examples).
CODE_CONTESTS_TEMPLATE = string.Template(
    "Provide a Python solution for the following competitive programming question: ${problem}.\n\n"
    + BACKTICKS_INSTRUCTION
)

# App. C.4. ${problem} is the HumanEval prompt (signature, docstring, examples); the assistant turn is
# prefilled with the same text.
HUMANEVAL_PLUS_TEMPLATE = string.Template(
    "Write a solution to the following problem and make sure that it passes the tests:\n${problem}"
)

# App. C.5, with a single example test.
MBPP_PLUS_TEMPLATE = string.Template(
    "Provide a Python solution for the following problem: ${problem}\nYour code should pass these tests:"
    "\n\n${test}\n\n" + BACKTICKS_INSTRUCTION
)


def _field(record: Mapping, key: str, source: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ValueError(
            f"{source} record {record.get('name') or record.get('task_id')!r} has no text field {key!r} "
            f"(got {type(value).__name__}); rebuild the dataset with the rlef_jax {source} builder."
        )
    return value


def mbpp_description(prompt: str) -> str:
    """The MBPP+ task text: the record's `prompt` without its docstring quotes and example asserts.

    EvalPlus wraps the MBPP `text` in a docstring (`\"\"\"`, or `'''` in the pre-release) and, from
    v0.1.0 on, appends the first test as an `assert` line; both are removed so that the template's own
    `${test}` is the only example.
    """
    text = prompt.strip()
    for quote in ('"""', "'''"):
        if text.startswith(quote) and text.endswith(quote) and len(text) >= 6:
            text = text[3:-3]
            break
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("assert ")]
    return "\n".join(lines).strip()


def mbpp_example_test(assertion: str) -> str:
    """The first `assert` statement of an MBPP+ record's `assertion` field (the original MBPP tests).

    Parsed with `ast` so that a statement spanning several lines is kept whole.
    """
    try:
        module = ast.parse(assertion)
    except SyntaxError as e:
        raise ValueError(f"MBPP+ `assertion` field is not valid Python ({e}); check the input file.") from e
    for node in module.body:
        if isinstance(node, ast.Assert):
            return ast.get_source_segment(assertion, node)
    raise ValueError(f"MBPP+ `assertion` field has no assert statement: {assertion[:200]!r}.")


def initial_messages(source: str, record: Mapping) -> tuple[list[dict[str, str]], str | None]:
    """The first user turn for `record` and the assistant prefill (None when the turn is not prefilled).

    `source` is one of `SOURCES`; synthetic problems use the CodeContests template, MBPP training
    problems the MBPP+ one.
    """
    if source in (CODE_CONTESTS, SYNTHETIC):
        content = CODE_CONTESTS_TEMPLATE.substitute(problem=_field(record, "description", source))
        prefill = None
    elif source == HUMANEVAL_PLUS:
        starter = _field(record, "prompt", source)
        content = HUMANEVAL_PLUS_TEMPLATE.substitute(problem=starter)
        prefill = starter
    elif source == MBPP_PLUS:
        content = MBPP_PLUS_TEMPLATE.substitute(
            problem=mbpp_description(_field(record, "prompt", source)),
            test=mbpp_example_test(_field(record, "assertion", source)),
        )
        prefill = None
    elif source == MBPP:
        # The MBPP+ prompt (App. C.5) with the record's public test (its first assert) as the example.
        public = record.get("public_tests")
        if not isinstance(public, list) or not public or not isinstance(public[0], str):
            raise ValueError(f"mbpp record {record.get('name')!r} has no public test to show in the prompt.")
        content = MBPP_PLUS_TEMPLATE.substitute(problem=_field(record, "description", source).strip(),
                                                test=public[0])
        prefill = None
    else:
        raise ValueError(f"Unknown problem source {source!r}; expected one of {SOURCES}.")
    return [{"role": "user", "content": content}], prefill
