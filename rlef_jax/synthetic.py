"""A synthetic task family where execution feedback is necessary, for CPU-scale RLEF experiments.

Every task reads one line of lowercase words and prints them transformed by an operation that the
statement names (keep, reverse, sort, reverse-sort), joined by a *secret separator*: one of the eight
`SEPARATORS`, drawn uniformly per task and never mentioned in the statement. The statement carries no
examples, so the separator is only learnt from the execution feedback of a failing public test
("Expected output `ant-cat-dog` but got `ant,cat,dog`", paper App. C.1). This gives the four properties
the RLEF ablations need (paper §3, App. C.2; docs/method.md §5.7):

(a) the statement alone leaves a hidden choice (1 of 8) that the public tests pin down: a policy that
    ignores feedback can at best try 3 distinct separators in 3 turns (1@3 ceiling 3/8 with early
    stopping, 1/8 in the no-feedback variant where the 3rd answer is scored);
(b) the feedback on a failing public test shows the expected output, which contains the separator;
    `reference_response` solves every task from the statement plus feedback (within 2 turns);
(c) random feedback (another task's, App. C.2) shows another task's separator, which is independent of
    this one's;
(d) private and generated tests use other word sets than the public tests, so every expected output
    differs and a program that prints the public outputs fails them all.

Records follow the CodeContests schema of docs/DESIGN.md "Data records", so the real prompt template,
executor and feedback messages are used unchanged. Generation is deterministic and prefix-stable:
problem `i` of `generate_problems(n, seed)` depends only on `(seed, i)`.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence

WORDS = (
    "ant", "ape", "bat", "bee", "boa", "cat", "cod", "cow", "crab", "crow", "deer", "dog", "dove",
    "duck", "eel", "elk", "emu", "fox", "frog", "goat", "hare", "hen", "jay", "lion", "mole", "moth",
    "newt", "owl", "pig", "ram", "seal", "yak",
)
SEPARATORS = ("-", ",", "+", "*", "/", ";", ":", "|")

# operation name -> (phrase in the statement, Python expression producing the words in output order).
OPERATIONS = {
    "keep": ("in the given order", "input().split()"),
    "reverse": ("in reverse order", "reversed(input().split())"),
    "sort": ("in alphabetical order", "sorted(input().split())"),
    "sort_desc": ("in reverse alphabetical order", "reversed(sorted(input().split()))"),
}

STATEMENT = (
    "Read a line of lowercase words separated by spaces and print the words {phrase}, joined by a "
    "secret separator symbol"
)

MIN_WORDS, MAX_WORDS = 3, 5
NUM_PUBLIC_CHOICES = (1, 2)
NUM_PRIVATE = 5
NUM_GENERATED = 5
TIME_LIMIT = {"seconds": 2, "nanos": 0}
MEMORY_LIMIT_BYTES = 0  # 0: the executor's default (1 GiB, paper App. A.2)

_EXPECTED_RE = re.compile(r"Expected output `([^`]*)`")


def apply_operation(operation: str, words: Sequence[str]) -> list[str]:
    """The words of one test in output order (the ground truth the programs are checked against)."""
    if operation == "keep":
        return list(words)
    if operation == "reverse":
        return list(reversed(words))
    if operation == "sort":
        return sorted(words)
    if operation == "sort_desc":
        return sorted(words, reverse=True)
    raise ValueError(f"Unknown synthetic operation {operation!r}; expected one of {sorted(OPERATIONS)}.")


def solution_program(operation: str, separator: str) -> str:
    """The one-line program for `operation` with `separator`, e.g. `print('-'.join(sorted(input().split())))`."""
    if operation not in OPERATIONS:
        raise ValueError(f"Unknown synthetic operation {operation!r}; expected one of {sorted(OPERATIONS)}.")
    if len(separator) != 1 or separator in "'\\\n":
        raise ValueError(f"Separator must be one character other than quote, backslash or newline: {separator!r}.")
    return f"print('{separator}'.join({OPERATIONS[operation][1]}))"


def response_text(program: str) -> str:
    """A model response: the program in a fenced python block and nothing else (paper App. D style)."""
    return f"```python\n{program}\n```"


def description(operation: str) -> str:
    """The statement of a task with `operation`; it does not depend on the separator (property (a))."""
    return STATEMENT.format(phrase=OPERATIONS[operation][0])


def _draw_words(rng: random.Random, used: set[frozenset]) -> list[str]:
    """Distinct words, in an order that no operation leaves unchanged, over a word set not yet used."""
    while True:
        words = rng.sample(WORDS, rng.randint(MIN_WORDS, MAX_WORDS))
        key = frozenset(words)
        if key in used or words == sorted(words) or words == sorted(words, reverse=True):
            continue
        used.add(key)
        return words


def _tests(rng, operation, separator, count, used) -> dict:
    inputs, outputs = [], []
    for _ in range(count):
        words = _draw_words(rng, used)
        inputs.append(" ".join(words) + "\n")
        outputs.append(separator.join(apply_operation(operation, words)) + "\n")
    return {"input": inputs, "output": outputs}


def generate_problem(seed: int, index: int) -> dict:
    """Problem `index` of the family for `seed`, in the CodeContests record schema."""
    rng = random.Random(f"rlef_jax.synthetic:{seed}:{index}")
    operation = rng.choice(sorted(OPERATIONS))
    separator = rng.choice(SEPARATORS)
    used: set[frozenset] = set()
    public = _tests(rng, operation, separator, rng.choice(NUM_PUBLIC_CHOICES), used)
    private = _tests(rng, operation, separator, NUM_PRIVATE, used)
    generated = _tests(rng, operation, separator, NUM_GENERATED, used)
    wrong_separator = [solution_program(operation, s) for s in SEPARATORS if s != separator]
    wrong_operation = [solution_program(o, separator) for o in sorted(OPERATIONS) if o != operation]
    return {
        "name": f"synthetic_{seed}_{index:06d}",
        "description": description(operation),
        "public_tests": public,
        "private_tests": private,
        "generated_tests": generated,
        "solutions": [solution_program(operation, separator)],
        "incorrect_solutions": wrong_separator + wrong_operation,
        "time_limit": dict(TIME_LIMIT),
        "memory_limit_bytes": MEMORY_LIMIT_BYTES,
    }


def generate_problems(num_problems: int, seed: int) -> list[dict]:
    """`num_problems` synthetic problems for `seed` (CodeContests record schema, docs/DESIGN.md)."""
    if isinstance(num_problems, bool) or not isinstance(num_problems, int) or num_problems < 0:
        raise ValueError(f"num_problems must be a non-negative int, got {num_problems!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    return [generate_problem(seed, i) for i in range(num_problems)]


def statement_programs(statement: str) -> list[str]:
    """Every program the statement alone allows: its operation with each separator, in `SEPARATORS`
    order (the feedback-blind choice set of the warm start and of property (a))."""
    operation = parse_operation(statement)
    return [solution_program(operation, s) for s in SEPARATORS]


def separator_of(record: dict) -> str:
    """The secret separator of a synthetic record (from its reference solution)."""
    return separator_in_program(record["solutions"][0])


def separator_in_program(program: str) -> str:
    """The separator a `solution_program` joins with."""
    match = re.match(r"print\('(.)'\.join\(", program)
    if match is None:
        raise ValueError(f"Not a synthetic solution program: {program!r}.")
    return match.group(1)


def parse_operation(statement: str) -> str:
    """The operation a synthetic statement names (the solver reads it, as a model must)."""
    matches = [op for op in OPERATIONS if description(op) in statement]
    if len(matches) != 1:
        raise ValueError(f"Not a synthetic task statement (matched operations {matches}): {statement[:200]!r}.")
    return matches[0]


def separator_from_feedback(feedback: str) -> str | None:
    """The separator shown by the first "Expected output `...`" of a feedback message, else None.

    Expected outputs are words joined by the separator, so the first non-letter character is it.
    """
    for expected in _EXPECTED_RE.findall(feedback):
        for char in expected.strip():
            if not char.islower():
                return char
    return None


def reference_response(statement: str, feedback: Sequence[str] = ()) -> str:
    """The reference solver (property (b)): a response from the statement and the feedback so far.

    It takes the separator from the most recent feedback that shows an expected output and guesses
    `SEPARATORS[0]` before any is seen, so it solves every task by turn 2 under true feedback.
    """
    separator = SEPARATORS[0]
    for text in reversed(feedback):
        found = separator_from_feedback(text)
        if found is not None:
            separator = found
            break
    return response_text(solution_program(parse_operation(statement), separator))


def blind_response(statement: str, turn: int) -> str:
    """The best feedback-ignoring policy: separator `SEPARATORS[turn]`, distinct in each turn.

    Its 1@3 is the ceiling of any policy that does not read the feedback: it wins when the secret
    separator is among the first `max_turns` it tries (3/8 with early stopping).
    """
    return response_text(solution_program(parse_operation(statement), SEPARATORS[turn % len(SEPARATORS)]))
