"""`humaneval_plus` and `mbpp_plus`: the EvalPlus benchmarks (paper §1.6, §4), one `test` split each.

Input, first found: the builder argument `source_file=...` (a `.jsonl` or `.jsonl.gz` EvalPlus release
file); `$RLEF_JAX_HUMANEVAL_PLUS_FILE` / `$RLEF_JAX_MBPP_PLUS_FILE`; a single `*.jsonl[.gz]` in TFDS's
manual dir; otherwise the file shipped with the package (`rlef_jax/assets/benchmarks/`, see
`rlef_jax.data.assets`), so both builders work offline. Only if that file is missing (an install without
package data) is the official release downloaded (HumanEval+ v0.1.10, MBPP+ v0.2.0, the versions
evalplus 0.3.1 pins).

The shipped HumanEval+ file is that same v0.1.10 release. The shipped MBPP+ file is NOT the official
release but an EvalPlus pre-release snapshot (399 tasks, see its SOURCE.md): its solve rates are not
comparable with published MBPP+ numbers; pass the official file as above for those.

Records keep the EvalPlus field names (docs/DESIGN.md "Data records"). `base_input` / `plus_input` are
stored as the JSON values of the file; a field the file lacks (e.g. `test` in MBPP+ files) is null, so every
record has the same keys.
"""
from __future__ import annotations

import gzip
import json
import logging
import pathlib
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from rlef_jax import errors
from rlef_jax.data import assets, base, records

HUMANEVAL_PLUS_URL = (
    "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz"
)
MBPP_PLUS_URL = "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz"


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    """The objects of a `.jsonl` or `.jsonl.gz` file, one per non-empty line."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise records.RecordError(f"{path}:{line_no} is not JSON ({e}); is it an EvalPlus .jsonl?") from e
    return rows


def evalplus_record(row: dict[str, Any], fields: tuple[str, ...], *, where: str) -> dict[str, Any]:
    """One EvalPlus row with exactly `fields` (missing optional ones null), inputs as JSON values."""
    required = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
    missing = [f for f in required if f not in row]
    if missing:
        raise records.RecordError(f"{where}: EvalPlus row lacks {missing}; is this an EvalPlus release file?")
    record = {f: row.get(f) for f in fields}
    for f in ("base_input", "plus_input"):
        if isinstance(record[f], str):
            record[f] = json.loads(record[f])
        if record[f] is None or record[f] == {}:
            record[f] = []  # some MBPP+ tasks (e.g. Mbpp/793 in the pre-release) store no inputs as {}
        if not isinstance(record[f], list):
            raise records.RecordError(f"{where}: {f!r} must be a list of argument lists.")
    record["atol"] = float(record["atol"] or 0)
    return record


class _EvalPlusBuilder(base.ProblemBuilder, skip_registration=True):
    """Shared EvalPlus logic; subclasses set the URL, env var, shipped file and field list."""

    URL: ClassVar[str]
    ENV_VAR: ClassVar[str]
    FIELDS: ClassVar[tuple[str, ...]]
    SHIPPED: ClassVar[str]  # the default input: a file under rlef_jax/assets/benchmarks (`assets`)
    SHIPPED_NOTE: ClassVar[str | None] = None  # logged as a warning when the shipped file is used

    def __init__(self, *, source_file: str | None = None, **kwargs):
        self._source_file = source_file
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        fix = f"Pass source_file=<EvalPlus .jsonl[.gz]> or set ${self.ENV_VAR} (release: {self.URL})."
        path = base.resolve_input(self._source_file, self.ENV_VAR, dl_manager, what="EvalPlus file", fix=fix)
        if path is not None and path.is_dir():
            candidates = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.jsonl.gz"))
            if len(candidates) != 1:
                raise errors.MissingPathError(f"Expected one EvalPlus .jsonl[.gz] in {path}, found {candidates}. {fix}")
            path = candidates[0]
        if path is None and self.SHIPPED in assets.shipped_files():
            path = assets.benchmark_file(self.SHIPPED)
            if self.SHIPPED_NOTE:
                logging.warning("%s: %s", self.name, self.SHIPPED_NOTE)
        if path is None:
            try:
                path = pathlib.Path(dl_manager.download(self.URL))
            except Exception as e:
                raise errors.MissingPathError(f"Could not download {self.URL} ({e}). {fix}") from e
        return {"test": self._generate_examples(path)}

    def _generate_examples(self, path: pathlib.Path):
        seen = set()
        for i, row in enumerate(read_jsonl(path)):
            record = evalplus_record(row, self.FIELDS, where=f"{path} line {i + 1}")
            if record["task_id"] in seen:
                raise records.RecordError(f"{path}: duplicate task_id {record['task_id']!r}.")
            seen.add(record["task_id"])
            yield i, records.encode_example(self.SOURCE, record["task_id"], record)
        if not seen:
            raise records.RecordError(f"{path}: no tasks; is it an EvalPlus release file?")


class HumanevalPlus(_EvalPlusBuilder):
    """HumanEval+ (EvalPlus): 164 function-completion tasks with base and plus test inputs."""

    name = "humaneval_plus"
    SOURCE = "humaneval_plus"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "EvalPlus HumanEval+ fields, one test split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place HumanEvalPlus.jsonl.gz ({HUMANEVAL_PLUS_URL}) in the manual dir."
    URL = HUMANEVAL_PLUS_URL
    ENV_VAR = "RLEF_JAX_HUMANEVAL_PLUS_FILE"
    FIELDS = records.EVALPLUS_FIELDS
    SHIPPED = assets.HUMANEVAL_PLUS  # the v0.1.10 release file itself


class MbppPlus(_EvalPlusBuilder):
    """MBPP+ (EvalPlus): MBPP tasks with base (original asserts) and plus test inputs."""

    name = "mbpp_plus"
    SOURCE = "mbpp_plus"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "EvalPlus MBPP+ fields incl. `assertion`, one test split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Place MbppPlus.jsonl.gz ({MBPP_PLUS_URL}) in the manual dir."
    URL = MBPP_PLUS_URL
    ENV_VAR = "RLEF_JAX_MBPP_PLUS_FILE"
    FIELDS = records.MBPP_PLUS_FIELDS
    SHIPPED = assets.MBPP_PLUS_PRERELEASE
    SHIPPED_NOTE = (
        f"no input file given, using the shipped EvalPlus MBPP+ pre-release snapshot ({SHIPPED}, 399 tasks). "
        f"It is not the official v0.2.0 release: results are not comparable with published MBPP+ numbers. "
        f"For those, pass source_file= or set ${ENV_VAR} to the release file ({MBPP_PLUS_URL})."
    )
