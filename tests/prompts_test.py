"""The paper's prompt templates (App. C.1, C.4, C.5), rendered through the Llama 3 chat template."""
import gzip
import json
import pathlib

import pytest

from rlef_jax import prompts
from rlef_jax import tokenizer as tok_lib
from rlef_jax.data import assets

HUMANEVAL_PLUS = assets.benchmark_file(assets.HUMANEVAL_PLUS)  # shipped: rlef_jax/assets/benchmarks
MBPP_PLUS = assets.benchmark_file(assets.MBPP_PLUS_PRERELEASE)
# One CodeContests-style statement (unicode, bullet lines with trailing spaces, blank lines) in the row
# format of CodeT's CodeContests prompt file; written for these tests, as no CodeContests data is shipped.
CODE_CONTESTS_STATEMENT = pathlib.Path(__file__).resolve().parent / "fixtures" / "code_contests_statement.jsonl.gz"
HEADER_USER = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
HEADER_ASSISTANT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
FENCE = "```"
BACKTICKS = (
    f"Your code should be enclosed in triple backticks like so: {FENCE}python YOUR CODE HERE {FENCE}. "
    "Use the backticks for your code only."
)


def _jsonl(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def chat():
    return tok_lib.ChatTokenizer.load(tok_lib.cached_llama3_tokenizer_dir())


def _render(chat, messages, prefill):
    ids = chat.encode_dialog(messages) + (chat.encode(prefill) if prefill else [])
    return chat.hf.decode(ids)


def test_code_contests_prompt_byte_for_byte(chat):
    description = "Given n, print n + 1.\n\nInput\n\nOne integer n.\n\nOutput\n\nPrint n + 1."
    messages, prefill = prompts.initial_messages("code_contests", {"description": description})
    assert prefill is None
    assert messages == [{"role": "user", "content": (
        "Provide a Python solution for the following competitive programming question: Given n, print n + 1."
        "\n\nInput\n\nOne integer n.\n\nOutput\n\nPrint n + 1..\n\n" + BACKTICKS)}]
    assert _render(chat, messages, prefill) == (
        HEADER_USER + "Provide a Python solution for the following competitive programming question: "
        + description + ".\n\n" + BACKTICKS + HEADER_ASSISTANT
    )


def test_code_contests_real_statement_is_inserted_raw(chat):
    row = _jsonl(CODE_CONTESTS_STATEMENT)[0]
    description = row["prompt"].strip().strip("'").strip()
    for source in ("code_contests", "synthetic"):
        messages, _ = prompts.initial_messages(source, {"description": description})
        text = messages[0]["content"]
        head = "Provide a Python solution for the following competitive programming question: "
        assert text.startswith(head) and text.endswith(".\n\n" + BACKTICKS)
        assert text[len(head):-len(".\n\n" + BACKTICKS)] == description
    assert _render(chat, messages, None) == HEADER_USER + messages[0]["content"] + HEADER_ASSISTANT


def test_humaneval_plus_prompt_and_prefill(chat):
    record = _jsonl(HUMANEVAL_PLUS)[0]
    starter = record["prompt"]
    assert starter.startswith("from typing import List\n\n\ndef has_close_elements(")
    messages, prefill = prompts.initial_messages("humaneval_plus", record)
    assert messages == [{"role": "user", "content": (
        "Write a solution to the following problem and make sure that it passes the tests:\n" + starter)}]
    assert prefill == starter
    # The template trims the user content (the starter's trailing newline); the prefill is kept as is.
    assert _render(chat, messages, prefill) == (
        HEADER_USER + "Write a solution to the following problem and make sure that it passes the tests:\n"
        + starter.rstrip() + HEADER_ASSISTANT + starter
    )


def test_mbpp_plus_prompt_byte_for_byte(chat):
    record = next(r for r in _jsonl(MBPP_PLUS)
                  if r["task_id"] == "Mbpp/2")
    messages, prefill = prompts.initial_messages("mbpp_plus", record)
    assert prefill is None
    expected = (
        "Provide a Python solution for the following problem: Write a function to find the shared elements "
        "from the given two lists.\nYour code should pass these tests:\n\n"
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n\n" + BACKTICKS
    )
    assert messages == [{"role": "user", "content": expected}]
    assert _render(chat, messages, prefill) == HEADER_USER + expected + HEADER_ASSISTANT


def test_mbpp_plus_release_format_drops_the_docstring_assert():
    # v0.2.0 prompts are a """-docstring holding the task text and the first test.
    record = {
        "prompt": '"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3\n"""\n',
        "assertion": "\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n",
    }
    messages, _ = prompts.initial_messages("mbpp_plus", record)
    assert messages[0]["content"] == (
        "Provide a Python solution for the following problem: Write a function to add two numbers.\n"
        "Your code should pass these tests:\n\nassert add(1, 2) == 3\n\n" + BACKTICKS
    )


def test_mbpp_example_test_keeps_multiline_assert_whole():
    assertion = "import math\nassert math.isclose(area(\n    2), 12.56, rel_tol=0.001)\nassert area(1) > 3\n"
    assert prompts.mbpp_example_test(assertion) == "assert math.isclose(area(\n    2), 12.56, rel_tol=0.001)"


def test_every_evalplus_record_renders():
    for row in _jsonl(MBPP_PLUS):
        (message,), _ = prompts.initial_messages("mbpp_plus", row)
        test = message["content"].split("Your code should pass these tests:\n\n")[1].split("\n\nYour code")[0]
        assert test.startswith("assert ") and test in row["assertion"], row["task_id"]
        assert "'''" not in message["content"] and '"""' not in message["content"], row["task_id"]
    for row in _jsonl(HUMANEVAL_PLUS):
        _, prefill = prompts.initial_messages("humaneval_plus", row)
        assert prefill == row["prompt"]


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="Unknown problem source 'apps'"):
        prompts.initial_messages("apps", {"description": "x"})
    with pytest.raises(ValueError, match="no text field 'description'"):
        prompts.initial_messages("code_contests", {"name": "p"})
    with pytest.raises(ValueError, match="no assert statement"):
        prompts.mbpp_example_test("x = 1\n")
    with pytest.raises(ValueError, match="not valid Python"):
        prompts.mbpp_example_test("assert (\n")
