"""The problem record every rlef_jax dataset emits (docs/DESIGN.md "Data records"), without TFDS.

An example is `{"name": str, "source": str, "problem": str}` where `problem` is the JSON of one record
in its source's own field names. This module owns that encoding and the checks that turn a malformed
source row into one clear error; it imports nothing heavy so the pipeline and the environment can use it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rlef_jax import errors

CONTEST_TEST_FIELDS = ("public_tests", "private_tests", "generated_tests")
CONTEST_FIELDS = (
    "name", "description", *CONTEST_TEST_FIELDS, "solutions", "incorrect_solutions", "time_limit",
    "memory_limit_bytes",
)
EVALPLUS_FIELDS = (
    "task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol", "test",
    "contract",
)
MBPP_PLUS_FIELDS = (*EVALPLUS_FIELDS, "assertion")
# MBPP as an RL task set: the CodeContests roles (public tests shown in the prompt and fed back, private
# tests scoring), with assert statements as tests (docs/DESIGN.md "Data records").
MBPP_FIELDS = ("name", "description", "public_tests", "private_tests", "generated_tests", "solutions",
               "incorrect_solutions", "time_limit", "memory_limit_bytes", "test_setup_code")


class RecordError(errors.InputError):
    """A source row or file that does not have the shape of its dataset's schema (a `ValueError`)."""


def encode_example(source: str, name: str, record: Mapping[str, Any]) -> dict[str, str]:
    """The TFDS example for one record: its name, source and the record as JSON text."""
    return {"name": name, "source": source, "problem": json.dumps(record, ensure_ascii=False)}


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """A stored example (bytes or str values) as `{"name", "source", "problem": dict}`."""
    def text(value):
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    try:
        return {
            "name": text(example["name"]),
            "source": text(example["source"]),
            "problem": json.loads(text(example["problem"])),
        }
    except KeyError as e:
        raise RecordError(
            f"Stored example lacks the feature {e.args[0]!r}: it was not written by an rlef_jax builder; "
            "rebuild the dataset."
        ) from None


def tests_dict(value, *, where: str) -> dict[str, list[str]]:
    """`{"input": [...], "output": [...]}` of equal lengths, from a CodeContests test struct (or None)."""
    if value is None:
        return {"input": [], "output": []}
    if not isinstance(value, Mapping) or "input" not in value or "output" not in value:
        raise RecordError(f"{where}: tests must be a struct with 'input' and 'output' lists, got {value!r:.200}.")
    inputs, outputs = list(value["input"] or []), list(value["output"] or [])
    if len(inputs) != len(outputs):
        raise RecordError(f"{where}: {len(inputs)} test inputs but {len(outputs)} outputs.")
    if not all(isinstance(s, str) for s in inputs + outputs):
        raise RecordError(f"{where}: test inputs and outputs must be strings.")
    return {"input": inputs, "output": outputs}


def validate_contest_record(record: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Checks a CodeContests-schema record (also the synthetic family's) and returns it as a plain dict."""
    missing = [f for f in CONTEST_FIELDS if f not in record]
    if missing:
        raise RecordError(f"{where}: record lacks the CodeContests fields {missing}.")
    if not isinstance(record["name"], str) or not isinstance(record["description"], str):
        raise RecordError(f"{where}: 'name' and 'description' must be strings.")
    out = dict(record)
    for field in CONTEST_TEST_FIELDS:
        out[field] = tests_dict(record[field], where=f"{where} {field}")
    for field in ("solutions", "incorrect_solutions"):
        if not isinstance(record[field], list) or not all(isinstance(s, str) for s in record[field]):
            raise RecordError(f"{where}: {field!r} must be a list of Python 3 source strings.")
    limit = record["time_limit"]
    if limit is not None and not (isinstance(limit, Mapping) and {"seconds", "nanos"} <= set(limit)):
        raise RecordError(f"{where}: 'time_limit' must be null or {{'seconds', 'nanos'}}, got {limit!r}.")
    if not isinstance(record["memory_limit_bytes"], int) or record["memory_limit_bytes"] < 0:
        raise RecordError(f"{where}: 'memory_limit_bytes' must be a non-negative int (0: unspecified).")
    return out


def time_limit_seconds(record: Mapping[str, Any]) -> float | None:
    """The record's time limit in seconds, or None when the problem specifies none (paper §1.4)."""
    limit = record.get("time_limit")
    if not limit:
        return None
    seconds = float(limit.get("seconds") or 0) + float(limit.get("nanos") or 0) * 1e-9
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def validate_mbpp_record(record: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Checks an MBPP task-set record: tests are lists of `assert` statements, at least one public and
    one private; returns it as a plain dict."""
    missing = [f for f in MBPP_FIELDS if f not in record]
    if missing:
        raise RecordError(f"{where}: record lacks the MBPP task fields {missing}.")
    for field in ("name", "description", "test_setup_code"):
        if not isinstance(record[field], str):
            raise RecordError(f"{where}: {field!r} must be a string.")
    for field in ("public_tests", "private_tests", "generated_tests", "solutions", "incorrect_solutions"):
        if not isinstance(record[field], list) or not all(isinstance(s, str) for s in record[field]):
            raise RecordError(f"{where}: {field!r} must be a list of strings.")
    for field in ("public_tests", "private_tests", "generated_tests"):
        bad = [t for t in record[field] if not t.lstrip().startswith("assert")]
        if bad:
            raise RecordError(f"{where}: {field!r} must hold assert statements, got {bad[0][:80]!r}.")
    if not record["public_tests"] or not record["private_tests"]:
        raise RecordError(f"{where}: needs at least one public and one private test, got "
                          f"{len(record['public_tests'])} and {len(record['private_tests'])}.")
    if record["time_limit"] is not None or not isinstance(record["memory_limit_bytes"], int):
        raise RecordError(f"{where}: 'time_limit' must be null and 'memory_limit_bytes' an int (0: default).")
    return dict(record)
