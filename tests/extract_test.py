"""Code extraction and validity (the rule documented in rlef_jax/extract.py)."""
import pytest

from rlef_jax import extract


@pytest.mark.parametrize("text,last,first", [
    ("```python\nA = 1\n```", "A = 1\n", "A = 1\n"),
    ("draft:\n```python\nA = 1\n```\nfixed:\n```py\nA = 2\n```\n", "A = 2\n", "A = 1\n"),
    ("```\nA = 3\n```", "A = 3\n", "A = 3\n"),
    ("```cpp\nint a;\n```\n```python3\nA = 4\n```", "A = 4\n", "A = 4\n"),
    ("```python\nA = 5\n", None, None),               # cut before the closing fence
    ("```python A = 6 ```", None, None),               # the prompt's inline form has no newline
    ("no code", None, None),
])
def test_extraction_rules(text, last, first):
    assert extract.extract_code(text, rule="last_block") == last
    assert extract.extract_code(text, rule="first_block") == first


def test_prefill_is_part_of_the_code():
    prefill = "def f(x):\n"
    assert extract.extract_code("    return x\n```\ntrailing prose", prefill=prefill) == "def f(x):\n    return x\n"
    assert extract.extract_code("    return x", prefill=prefill) == "def f(x):\n    return x"
    assert extract.extract_code("oops\n```python\nB = 1\n```", prefill=prefill) == "B = 1\n"


def test_validity_matches_the_compiler():
    assert extract.is_valid_code("print(1)\n")
    assert not extract.is_valid_code(None) and not extract.is_valid_code("  \n")
    assert not extract.is_valid_code("print(1")
    assert not extract.is_valid_code("return 1\n")  # parses, but only compiles inside a function
    assert not extract.is_valid_code("x = 1\x00")
    message = extract.syntax_error("print(1")
    assert message.startswith('  File "main.py", line 1') and message.endswith("SyntaxError: '(' was never closed\n")


def test_unknown_rule():
    with pytest.raises(ValueError, match="Unknown code_extraction rule"):
        extract.extract_code("x", rule="all_blocks")
