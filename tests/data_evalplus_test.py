"""The humaneval_plus and mbpp_plus builders on the real EvalPlus files and on small fixtures."""
import gzip
import json

import pytest
import tensorflow_datasets as tfds

import rlef_jax  # noqa: F401  (registers the builders)
from rlef_jax.data import assets, evalplus, records

HUMANEVAL_PLUS = assets.benchmark_file(assets.HUMANEVAL_PLUS)  # shipped: rlef_jax/assets/benchmarks
MBPP_PLUS = assets.benchmark_file(assets.MBPP_PLUS_PRERELEASE)


def _rows(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _build(name, data_dir, source_file):
    builder = tfds.builder(name, data_dir=str(data_dir), source_file=str(source_file))
    builder.download_and_prepare()
    return tfds.data_source(name, data_dir=str(data_dir), split="test")


def test_humaneval_plus_real_file(tmp_path):
    source = _build("humaneval_plus", tmp_path, HUMANEVAL_PLUS)
    rows = _rows(HUMANEVAL_PLUS)
    assert len(source) == len(rows) == 164
    for i, row in enumerate(rows):
        example = records.decode_example(source[i])
        assert (example["name"], example["source"]) == (row["task_id"], "humaneval_plus")
        problem = example["problem"]
        assert sorted(problem) == sorted(records.EVALPLUS_FIELDS)
        for field in ("task_id", "prompt", "entry_point", "canonical_solution", "test", "contract",
                      "base_input", "plus_input"):
            assert problem[field] == row[field], (row["task_id"], field)
        assert problem["atol"] == float(row["atol"])
    assert sum(len(records.decode_example(source[i])["problem"]["base_input"]) for i in range(164)) == 1570


def test_mbpp_plus_prerelease_file(tmp_path):
    source = _build("mbpp_plus", tmp_path, MBPP_PLUS)
    rows = _rows(MBPP_PLUS)
    assert len(source) == len(rows) == 399
    problems = {records.decode_example(source[i])["name"]: records.decode_example(source[i])["problem"]
                for i in range(len(source))}
    assert list(problems) == [r["task_id"] for r in rows]
    assert problems["Mbpp/793"]["plus_input"] == []  # stored as {} in this file
    first = problems["Mbpp/2"]
    assert sorted(first) == sorted(records.MBPP_PLUS_FIELDS) and first["test"] is None
    assert first["assertion"] == rows[0]["assertion"]


def test_plain_jsonl_from_env_var(tmp_path, monkeypatch):
    rows = [{"task_id": f"T/{i}", "prompt": "def f():\n", "entry_point": "f", "canonical_solution": "  pass\n",
             "base_input": [[i]], "plus_input": "[[1], [2]]", "atol": 0, "test": "", "contract": ""}
            for i in range(3)]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    monkeypatch.setenv(evalplus.HumanevalPlus.ENV_VAR, str(path))
    builder = tfds.builder("humaneval_plus", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare()
    source = tfds.data_source("humaneval_plus", data_dir=str(tmp_path / "tfds"), split="test")
    decoded = [records.decode_example(source[i])["problem"] for i in range(3)]
    assert [p["base_input"] for p in decoded] == [[[0]], [[1]], [[2]]]
    assert all(p["plus_input"] == [[1], [2]] and p["atol"] == 0.0 for p in decoded)


def test_bad_files_are_reported(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "T/0"}\n')
    with pytest.raises(records.RecordError, match=r"bad.jsonl line 1: EvalPlus row lacks \['prompt'"):
        tfds.builder("mbpp_plus", data_dir=str(tmp_path / "a"), source_file=str(bad)).download_and_prepare()
    bad.write_text("not json\n")
    with pytest.raises(records.RecordError, match="bad.jsonl:1 is not JSON"):
        tfds.builder("mbpp_plus", data_dir=str(tmp_path / "b"), source_file=str(bad)).download_and_prepare()
    with pytest.raises(FileNotFoundError, match="RLEF_JAX_MBPP_PLUS_FILE"):
        tfds.builder("mbpp_plus", data_dir=str(tmp_path / "c"),
                     source_file=str(tmp_path / "missing.jsonl")).download_and_prepare()


def test_without_input_the_shipped_file_is_used(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(evalplus.MbppPlus.ENV_VAR, raising=False)
    builder = tfds.builder("mbpp_plus", data_dir=str(tmp_path))
    with caplog.at_level("WARNING"):
        builder.download_and_prepare()  # no source_file, env var or manual dir: nothing is downloaded
    assert "pre-release" in caplog.text and "not comparable" in caplog.text
    source = tfds.data_source("mbpp_plus", data_dir=str(tmp_path), split="test")
    assert len(source) == len(_rows(MBPP_PLUS)) == 399
    assert assets.shipped_files() == sorted([assets.HUMANEVAL_PLUS, assets.HUMANEVAL_PLUS_MINI, assets.MBPP,
                                             assets.MBPP_PLUS_PRERELEASE])
