"""The code_contests builder on parquet shards written here in the Hugging Face schema."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

import rlef_jax  # noqa: F401  (registers the builders)
from rlef_jax.data import code_contests

TESTS = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
SOLUTIONS = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])
SCHEMA = pa.schema([
    ("name", pa.string()), ("description", pa.string()), ("public_tests", TESTS),
    ("private_tests", TESTS), ("generated_tests", TESTS), ("source", pa.int64()),
    ("difficulty", pa.int64()), ("solutions", SOLUTIONS), ("incorrect_solutions", SOLUTIONS),
    ("cf_contest_id", pa.int64()), ("cf_index", pa.string()), ("cf_points", pa.float64()),
    ("cf_rating", pa.int64()), ("cf_tags", pa.list_(pa.string())), ("is_description_translated", pa.bool_()),
    ("untranslated_description", pa.string()),
    ("time_limit", pa.struct([("seconds", pa.int64()), ("nanos", pa.int64())])),
    ("memory_limit_bytes", pa.int64()), ("input_file", pa.string()), ("output_file", pa.string()),
])


def _row(name, public, private, *, solutions=(), incorrect=(), time_limit=None, memory=256 << 20):
    return {
        "name": name, "description": f"Statement of {name}.\n",
        "public_tests": {"input": [i for i, _ in public], "output": [o for _, o in public]},
        "private_tests": {"input": [i for i, _ in private], "output": [o for _, o in private]},
        "generated_tests": {"input": ["9\n"], "output": ["10\n"]},
        "source": 2, "difficulty": 7,
        "solutions": {"language": [l for l, _ in solutions], "solution": [s for _, s in solutions]},
        "incorrect_solutions": {"language": [l for l, _ in incorrect], "solution": [s for _, s in incorrect]},
        "cf_contest_id": 1, "cf_index": "A", "cf_points": 500.0, "cf_rating": 800, "cf_tags": ["math"],
        "is_description_translated": False, "untranslated_description": "",
        "time_limit": time_limit, "memory_limit_bytes": memory, "input_file": "", "output_file": "",
    }


PY3, PY2, CPP = 3, 1, 2
ROWS = {
    "train-00000-of-00002": [
        _row("t0", [("1\n", "2\n")], [("3\n", "4\n")],
             solutions=[(PY3, "print(int(input())+1)"), (CPP, "int main(){}"), (PY2, "print input()+1")],
             incorrect=[(PY3, "print(0)")], time_limit={"seconds": 2, "nanos": 500_000_000}),
        _row("t1_no_public", [], [("3\n", "4\n")]),
        _row("t2_no_private", [("1\n", "2\n")], []),
    ],
    "train-00001-of-00002": [
        _row("t3", [("5\n", "6\n")], [("7\n", "8\n")], memory=0),
        _row("t4_no_tests", [], []),
    ],
    "valid-00000-of-00001": [
        _row("v0", [("1\n", "2\n")], [("3\n", "4\n")]),
        _row("v1_no_private", [("1\n", "2\n")], []),
    ],
    "test-00000-of-00001-9c49eeff30aacaa8": [_row("s0", [("1\n", "2\n")], [("3\n", "4\n")])],
}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("code_contests")
    (root / "data").mkdir()
    for shard, rows in ROWS.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / "data" / f"{shard}.parquet")
    return root


@pytest.fixture(scope="module")
def built(source_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds.builder("code_contests", data_dir=str(data_dir), source_dir=str(source_dir))
    builder.download_and_prepare()
    return builder, data_dir


def _names(source):
    return [e["name"].decode() for e in (source[i] for i in range(len(source)))]


def test_filtering_and_report(built):
    builder, data_dir = built
    expected = {
        "train": {"total": 5, "kept": 2, "dropped": 3},
        "valid": {"total": 2, "kept": 2, "dropped": 0},
        "test": {"total": 1, "kept": 1, "dropped": 0},
    }
    assert builder.filter_report == expected
    reloaded = tfds.builder("code_contests", data_dir=str(data_dir))
    assert dict(reloaded.info.metadata)["filter_report"] == expected
    sources = tfds.data_source("code_contests", data_dir=str(data_dir))
    assert {split: _names(sources[split]) for split in ("train", "valid", "test")} == {
        "train": ["t0", "t3"], "valid": ["v0", "v1_no_private"], "test": ["s0"],
    }


def test_record_fields(built):
    _, data_dir = built
    example = tfds.data_source("code_contests", data_dir=str(data_dir), split="train")[0]
    assert example["source"] == b"code_contests"
    assert json.loads(example["problem"]) == {
        "name": "t0",
        "description": "Statement of t0.\n",
        "public_tests": {"input": ["1\n"], "output": ["2\n"]},
        "private_tests": {"input": ["3\n"], "output": ["4\n"]},
        "generated_tests": {"input": ["9\n"], "output": ["10\n"]},
        "solutions": ["print(int(input())+1)"],
        "incorrect_solutions": ["print(0)"],
        "time_limit": {"seconds": 2, "nanos": 500_000_000},
        "memory_limit_bytes": 256 << 20,
        "difficulty": 7, "cf_rating": 800, "cf_tags": ["math"],
    }
    second = json.loads(tfds.data_source("code_contests", data_dir=str(data_dir), split="train")[1]["problem"])
    assert (second["time_limit"], second["memory_limit_bytes"], second["solutions"]) == (None, 0, [])


def test_env_var_input(source_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(code_contests.ENV_VAR, str(source_dir))
    builder = tfds.builder("code_contests", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.filter_report["train"]["kept"] == 2


def test_missing_inputs_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(code_contests.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download deepmind/code_contests"):
        tfds.builder("code_contests", data_dir=str(tmp_path / "a")).download_and_prepare()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfds.builder("code_contests", data_dir=str(tmp_path / "b"),
                     source_dir=str(tmp_path / "nope")).download_and_prepare()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No train-\*\.parquet shard"):
        tfds.builder("code_contests", data_dir=str(tmp_path / "c"),
                     source_dir=str(tmp_path / "empty")).download_and_prepare()


def test_malformed_row_is_reported():
    row = _row("bad", [("1\n", "2\n")], [("3\n", "4\n")])
    row["public_tests"] = {"input": ["1\n", "2\n"], "output": ["2\n"]}
    with pytest.raises(ValueError, match="bad.parquet row 0 public_tests: 2 test inputs but 1 outputs"):
        code_contests.record_from_row(row, where="bad.parquet row 0")
    del row["description"]
    with pytest.raises(ValueError, match=r"lacks the CodeContests columns \['description'\]"):
        code_contests.record_from_row(row, where="x")
