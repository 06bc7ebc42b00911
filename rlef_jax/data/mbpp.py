"""`mbpp`: MBPP (Austin et al. 2021) as an RL task set in the CodeContests-style record schema.

The real training source of the real-model path (configs/smollm2.py): short Python function problems,
each with three `assert` tests. Records keep the CodeContests roles (docs/DESIGN.md "Data records"):

* `public_tests`: the problem's first assert. It is shown in the prompt (the MBPP+ template of paper
  App. C.5 shows one example test) and is the test whose result is fed back and decides early stopping,
  as CodeContests' public tests are the examples of the statement.
* `private_tests`: the other two asserts (plus MBPP's `challenge_test_list`, when a task has one). The
  final program is scored on public + private tests (`env.score_public_tests`).
* `generated_tests`, `incorrect_solutions`: empty; `solutions`: the reference program; `time_limit`
  null and `memory_limit_bytes` 0 (the environment's defaults apply); `test_setup_code` runs before
  each test.

Splits follow MBPP's own task ids (its README): `prompt` 1–10, `test` 11–510, `valid` 511–600, `train`
601–974. MBPP+ (EvalPlus, shipped beside it and used as a transfer benchmark) re-uses MBPP tasks from
every split, so `train` and `valid` leave out the task ids MBPP+ contains (`exclude_mbpp_plus`,
default on): 374 → 263 train and 90 → 48 valid problems, and MBPP+ stays held out.

Input, first found: the builder argument `source_file=...`, `$RLEF_JAX_MBPP_FILE`, a single
`mbpp.jsonl[.gz]` in TFDS's manual dir, else the copy shipped in rlef_jax/assets/benchmarks/mbpp.
"""
from __future__ import annotations

import dataclasses
import pathlib

import tensorflow_datasets as tfds

from rlef_jax import errors
from rlef_jax.data import assets, base, evalplus, records

SPLITS = {"prompt": (1, 10), "test": (11, 510), "valid": (511, 600), "train": (601, 974)}
HELD_OUT_FROM_MBPP_PLUS = ("train", "valid")  # splits that leave out the tasks MBPP+ re-uses


def mbpp_record(row: dict, *, where: str) -> dict:
    """One MBPP jsonl row as a task-set record (module docstring: the public/private split)."""
    missing = [k for k in ("task_id", "text", "code", "test_list") if k not in row]
    if missing:
        raise records.RecordError(f"{where}: MBPP row lacks {missing}; is this MBPP's mbpp.jsonl?")
    tests = [t.strip() for t in row["test_list"]]
    challenge = [t.strip() for t in row.get("challenge_test_list") or []]
    record = {
        "name": f"mbpp/{row['task_id']}",
        "description": row["text"].strip(),
        "public_tests": tests[:1],
        "private_tests": tests[1:] + challenge,
        "generated_tests": [],
        "solutions": [row["code"].replace("\r\n", "\n")],
        "incorrect_solutions": [],
        "time_limit": None,
        "memory_limit_bytes": 0,
        "test_setup_code": (row.get("test_setup_code") or "").replace("\r\n", "\n"),
    }
    return records.validate_mbpp_record(record, where=where)


def mbpp_plus_task_ids(path: pathlib.Path | None = None) -> frozenset[int]:
    """The MBPP task ids an MBPP+ file (default: the shipped one) contains."""
    path = path or assets.benchmark_file(assets.MBPP_PLUS_PRERELEASE)
    return frozenset(int(row["task_id"].split("/")[-1]) for row in evalplus.read_jsonl(path))


@dataclasses.dataclass(eq=False)
class MbppConfig(tfds.core.BuilderConfig):
    """Whether `train`/`valid` leave out the tasks MBPP+ re-uses (module docstring)."""

    exclude_mbpp_plus: bool = True


class Mbpp(base.ProblemBuilder):
    """MBPP as RL task records: first assert public, the others private; splits prompt/test/valid/train."""

    name = "mbpp"
    SOURCE = "mbpp"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MBPP task records; train/valid without the tasks MBPP+ re-uses."}
    BUILDER_CONFIGS = [
        MbppConfig(name="default", description="train/valid without MBPP+ tasks", exclude_mbpp_plus=True),
        MbppConfig(name="all", description="every MBPP task in its split", exclude_mbpp_plus=False),
    ]
    ENV_VAR = "RLEF_JAX_MBPP_FILE"

    def __init__(self, *, source_file: str | None = None, **kwargs):
        self._source_file = source_file
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        fix = f"Pass source_file=<mbpp.jsonl[.gz]> or set ${self.ENV_VAR}, or use the shipped copy."
        path = base.resolve_input(self._source_file, self.ENV_VAR, dl_manager, what="MBPP file", fix=fix)
        if path is not None and path.is_dir():
            candidates = sorted(path.glob("mbpp.jsonl")) + sorted(path.glob("mbpp.jsonl.gz"))
            if len(candidates) != 1:
                raise errors.MissingPathError(f"Expected one mbpp.jsonl[.gz] in {path}, found {candidates}. {fix}")
            path = candidates[0]
        path = path or assets.benchmark_file(assets.MBPP)
        excluded = mbpp_plus_task_ids() if self.builder_config.exclude_mbpp_plus else frozenset()
        return {split: self._generate_examples(path, split, excluded) for split in SPLITS}

    def _generate_examples(self, path: pathlib.Path, split: str, excluded: frozenset[int]):
        lo, hi = SPLITS[split]
        count = 0
        for i, row in enumerate(evalplus.read_jsonl(path)):
            task_id = row.get("task_id")
            if not isinstance(task_id, int):
                raise records.RecordError(f"{path} line {i + 1}: task_id must be an int, got {task_id!r}.")
            if not lo <= task_id <= hi or (split in HELD_OUT_FROM_MBPP_PLUS and task_id in excluded):
                continue
            record = mbpp_record(row, where=f"{path} line {i + 1}")
            count += 1
            yield task_id, records.encode_example(self.SOURCE, record["name"], record)
        if not count:  # TFDS would fail on the empty split with an AssertionError
            held_out = ", less those MBPP+ re-uses" if split in HELD_OUT_FROM_MBPP_PLUS and excluded else ""
            raise records.RecordError(f"{path}: no task of the {split} split (task ids {lo}-{hi}{held_out}); "
                                      "is it the whole mbpp.jsonl?")
