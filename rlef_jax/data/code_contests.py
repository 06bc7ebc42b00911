"""`code_contests`: DeepMind CodeContests from the Hugging Face parquet shards (paper §4).

Input: a directory holding the shards of `deepmind/code_contests` as users download them, e.g.
`huggingface-cli download deepmind/code_contests --repo-type dataset --local-dir DIR`, which gives
`DIR/data/{train,valid,test}-*.parquet` (searched recursively). Give DIR as
`tfds.builder("code_contests", data_dir=..., source_dir=DIR)`, or `$RLEF_JAX_CODE_CONTESTS_DIR`, or
TFDS's manual dir (`<data_dir>/downloads/manual`, or `DownloadConfig(manual_dir=DIR)`).

Each record keeps the HF field names (docs/DESIGN.md "Data records"). `solutions` and
`incorrect_solutions` become lists of the PYTHON3 (language id 3) sources only: the paper's models write
Python 3 and are run under Python 3.10 (§1.4); Python 2 sources (id 1) would not run there and are
dropped. `time_limit` is `{"seconds", "nanos"}` or null, `memory_limit_bytes` 0 when unspecified; the
metadata fields `difficulty`, `cf_rating` and `cf_tags` are kept for analysis.

Filtering (paper §4): training problems without public or without private tests are dropped
(13,328 → 12,659 on the real data). Valid (117) and test (165) are kept whole, as the paper evaluates
on all of them; a problem there without tests is only logged. The counts are logged, kept in
`builder.filter_report` and saved in the dataset's `metadata.json` (`builder.info.metadata`).
"""
from __future__ import annotations

import logging
import pathlib
from typing import Any

import tensorflow_datasets as tfds

from rlef_jax import errors
from rlef_jax.data import base, records

PYTHON3 = 3
SPLITS = ("train", "valid", "test")
FILTERED_SPLITS = frozenset({"train"})
ENV_VAR = "RLEF_JAX_CODE_CONTESTS_DIR"
_COLUMNS = (
    *records.CONTEST_FIELDS, "difficulty", "cf_rating", "cf_tags",
)
_FIX = (
    "Download the parquet shards of deepmind/code_contests (`huggingface-cli download "
    "deepmind/code_contests --repo-type dataset --local-dir DIR`) and pass source_dir=DIR."
)


def python3_sources(value, *, where: str) -> list[str]:
    """The PYTHON3 sources of an HF `{language: [...], solution: [...]}` struct."""
    if value is None:
        return []
    languages, sources = list(value.get("language") or []), list(value.get("solution") or [])
    if len(languages) != len(sources):
        raise records.RecordError(f"{where}: {len(languages)} languages for {len(sources)} solutions.")
    return [src for lang, src in zip(languages, sources) if lang == PYTHON3]


def record_from_row(row: dict[str, Any], *, where: str) -> dict[str, Any]:
    """One HF CodeContests row as an rlef_jax record."""
    missing = [c for c in records.CONTEST_FIELDS if c not in row]
    if missing:
        raise records.RecordError(f"{where}: the parquet file lacks the CodeContests columns {missing}.")
    record = {
        "name": row["name"],
        "description": row["description"],
        **{f: records.tests_dict(row[f], where=f"{where} {f}") for f in records.CONTEST_TEST_FIELDS},
        "solutions": python3_sources(row["solutions"], where=f"{where} solutions"),
        "incorrect_solutions": python3_sources(row["incorrect_solutions"], where=f"{where} incorrect_solutions"),
        "time_limit": (
            None if row["time_limit"] is None
            else {"seconds": int(row["time_limit"].get("seconds") or 0),
                  "nanos": int(row["time_limit"].get("nanos") or 0)}
        ),
        "memory_limit_bytes": int(row["memory_limit_bytes"] or 0),
        **{k: row.get(k) for k in ("difficulty", "cf_rating", "cf_tags")},
    }
    return records.validate_contest_record(record, where=where)


def has_public_and_private_tests(record: dict[str, Any]) -> bool:
    return bool(record["public_tests"]["input"]) and bool(record["private_tests"]["input"])


def split_files(source_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    files = sorted(source_dir.rglob(f"{split}-*.parquet"))
    if not files:
        raise errors.MissingPathError(f"No {split}-*.parquet shard under {source_dir}. {_FIX}")
    return files


def parquet_rows(file: pathlib.Path):
    """The rows of one parquet shard as dicts (the CodeContests columns only); a file pyarrow cannot
    read (truncated, corrupted, not parquet) raises a RecordError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(e: Exception) -> records.RecordError:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return records.RecordError(f"{file}: not a readable parquet file ({reason}); the download is "
                                   "truncated or corrupted: download this shard again")

    try:
        parquet = pq.ParquetFile(file)
        columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
        batches = parquet.iter_batches(batch_size=32, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from None
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else batch.to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise unreadable(e) from None
        if rows is None:
            return
        yield from rows


class CodeContests(base.ProblemBuilder):
    """DeepMind CodeContests (Li et al. 2022) as rlef_jax problem records, train/valid/test."""

    name = "code_contests"
    SOURCE = "code_contests"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Python 3 solutions only; train problems without public/private tests dropped."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _FIX

    def __init__(self, *, source_dir: str | None = None, **kwargs):
        self._source_dir = source_dir
        self.filter_report: dict[str, dict[str, int]] = {}
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        source_dir = base.resolve_input(
            self._source_dir, ENV_VAR, dl_manager, what="CodeContests directory", fix=_FIX
        )
        if source_dir is None:
            raise errors.MissingPathError(f"No CodeContests input given. {_FIX} (or set ${ENV_VAR}).")
        return {split: self._generate_examples(split, split_files(source_dir, split)) for split in SPLITS}

    def _generate_examples(self, split: str, files: list[pathlib.Path]):
        report = {"total": 0, "kept": 0, "dropped": 0}
        for file_index, file in enumerate(files):
            for row_index, row in enumerate(parquet_rows(file)):
                record = record_from_row(row, where=f"{file} row {row_index}")
                report["total"] += 1
                key = file_index * 10**9 + row_index
                if not has_public_and_private_tests(record):
                    if split in FILTERED_SPLITS:
                        report["dropped"] += 1
                        continue
                    logging.warning("code_contests %s problem %r (%s row %d) has no public or private "
                                    "tests.", split, record["name"], file, row_index)
                report["kept"] += 1
                yield key, records.encode_example(self.SOURCE, record["name"], record)
        if not report["kept"]:  # TFDS would fail on the empty split with an AssertionError
            tests = " with public and private tests" if split in FILTERED_SPLITS else ""
            raise records.RecordError(f"no {split} problem{tests} in {', '.join(map(str, files))}")
        self.filter_report[split] = report
        self.info.metadata.setdefault("filter_report", {})[split] = report
        logging.info(
            "code_contests %s: %d problems, %d dropped for missing public or private tests, %d kept.",
            split, report["total"], report["dropped"], report["kept"],
        )
