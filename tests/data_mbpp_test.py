"""The `mbpp` RL task set: splits, the public/private split of each problem's asserts, the prompt and
feedback format, and every train/valid reference solution passing its own tests in the sandbox."""
import ast
import gzip
import json

import pytest

from rlef_jax import problem as problem_lib
from rlef_jax import prompts
from rlef_jax.data import assets, mbpp, records
from rlef_jax.execution import feedback
from rlef_jax.execution.types import Verdict


@pytest.fixture(scope="module")
def rows():
  with gzip.open(assets.benchmark_file(assets.MBPP), "rt") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  import tensorflow_datasets as tfds
  import rlef_jax.data.builders  # noqa: F401
  builder = tfds.builder("mbpp", data_dir=str(tmp_path_factory.mktemp("tfds")))
  builder.download_and_prepare()
  return {split: builder.as_data_source(split=split) for split in mbpp.SPLITS}


def _records(data_source):
  return [records.decode_example(data_source[i]) for i in range(len(data_source))]


def test_splits_follow_mbpp_ids_and_hold_out_mbpp_plus(source, rows):
  plus = mbpp.mbpp_plus_task_ids()
  assert len(plus) == 399
  ids = {split: [int(e["name"].split("/")[1]) for e in _records(source[split])] for split in source}
  assert ids["prompt"] == list(range(1, 11)) and ids["test"] == list(range(11, 511))
  want_train = [r["task_id"] for r in rows if 601 <= r["task_id"] <= 974 and r["task_id"] not in plus]
  want_valid = [r["task_id"] for r in rows if 511 <= r["task_id"] <= 600 and r["task_id"] not in plus]
  assert ids["train"] == want_train and len(want_train) == 263
  assert ids["valid"] == want_valid and len(want_valid) == 48
  assert not set(ids["train"] + ids["valid"]) & plus


def test_record_splits_the_asserts_public_first(source, rows):
  by_id = {r["task_id"]: r for r in rows}
  for example in _records(source["train"])[:50]:
    assert example["source"] == "mbpp"
    record = example["problem"]
    row = by_id[int(example["name"].split("/")[1])]
    assert set(record) == set(records.MBPP_FIELDS)
    assert record["public_tests"] == [row["test_list"][0].strip()]
    assert record["private_tests"] == [t.strip() for t in row["test_list"][1:] + row["challenge_test_list"]]
    assert record["description"] == row["text"].strip() and record["generated_tests"] == []


def test_prompt_is_the_mbpp_plus_template_with_the_public_test(source):
  record = _records(source["train"])[0]["problem"]
  problem = problem_lib.Problem.from_record("mbpp", record)
  assert problem.messages == ({"role": "user", "content": prompts.MBPP_PLUS_TEMPLATE.substitute(
      problem=record["description"], test=record["public_tests"][0])},)
  assert problem.prefill is None and problem.entry_point is None
  assert len(problem.public_cases) == 1 and len(problem.private_cases) == len(record["private_tests"])
  assert problem.retry_message() == feedback.EP_FOOTER_MBPP.lstrip("\n")


def test_reference_solutions_pass_and_wrong_programs_get_mbpp_feedback(source, synthetic_pool):
  examples = _records(source["train"]) + _records(source["valid"])
  problems = problem_lib.from_examples(examples, env_config={"default_time_s": 4.0})
  jobs = [p.job(e["problem"]["solutions"][0], p.public_cases + p.private_cases)
          for p, e in zip(problems, examples)]
  failed = [p.name for p, r in zip(problems, synthetic_pool.map(jobs)) if not r.passed]
  assert failed == []
  # A program whose function returns the wrong value: the assert's AssertionError in the MBPP+ format.
  def called(test):  # the function an `assert f(...) == x` test calls, if it names nothing else
    node = ast.parse(test).body[0].test
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    ok = isinstance(node, ast.Compare) and isinstance(node.left, ast.Call) and isinstance(node.left.func, ast.Name)
    return node.left.func.id if ok and names == {node.left.func.id} else None

  i = next(i for i, e in enumerate(examples) if called(e["problem"]["public_tests"][0]))
  problem, name = problems[i], called(examples[i]["problem"]["public_tests"][0])
  result = synthetic_pool.submit(problem.job(f"def {name}(*args, **kwargs):\n    return None\n",
                                             problem.public_cases)).result()
  assert result.cases[0].verdict == Verdict.WRONG_ANSWER
  text = problem.render_feedback(problem.public_cases, result.cases, feedback.Truncation())
  assert text.startswith(feedback.EP_HEADER + f"- Failure: `assertEqual({name}(")
  assert "`AssertionError: None != " in text and text.endswith(feedback.EP_FOOTER_MBPP)


def test_bad_rows_name_the_culprit():
  with pytest.raises(records.RecordError, match="lacks"):
    mbpp.mbpp_record({"task_id": 1, "text": "x"}, where="mbpp.jsonl line 1")
  with pytest.raises(records.RecordError, match="assert"):
    mbpp.mbpp_record({"task_id": 1, "text": "x", "code": "", "test_list": ["print(1)", "assert 1"]},
                     where="mbpp.jsonl line 1")
  with pytest.raises(records.RecordError, match="one public and one private"):
    mbpp.mbpp_record({"task_id": 1, "text": "x", "code": "", "test_list": ["assert 1"]}, where="line 1")
