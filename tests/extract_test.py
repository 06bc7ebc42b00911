"""Code extraction and validity (the rule documented in rlef_jax/extract.py).

`RESPONSES` is a table of realistic answers of Instruct models, each with the exact program the rule
must extract (None: no program). `REAL_SMOLLM2_RESPONSES` is for verbatim responses of a real small
Instruct model, in the same row format.
"""
import json
import pathlib
import random

import pytest

from rlef_jax import extract

LAST = {}                                  # the default rule, last_block
FIRST = {"rule": "first_block"}
INSTRUCTION = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
               "Use the backticks for your code only.")
STARTER = ('from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n'
           '    """Return True if the running balance ever falls below zero.\n'
           '    >>> below_zero([1, 2, -4, 5])\n    True\n    """\n')
BODY = "    balance = 0\n    for op in operations:\n        balance += op\n        if balance < 0:\n" \
       "            return True\n    return False\n"
FULL = "from typing import List\n\ndef below_zero(operations: List[int]) -> bool:\n" + BODY
SUM = "import sys\n\ndata = sys.stdin.read().split()\nprint(sum(map(int, data)))\n"
PLUS1 = "n = int(input())\nprint(n + 1)\n"


def prefill(text=STARTER):
    return {"prefill": text}


def fenced(text=STARTER):
    return {"prefill": "```python\n" + text}


# (id, response, extract_code keyword arguments (rule or prefill), expected program)
RESPONSES = [
    # --- prose and code
    ("prose_then_code",
     "Here is a Python solution for the problem:\n\n```python\ndef main():\n    n = int(input())\n"
     "    print(n * 2)\n\n\nmain()\n```", LAST,
     "def main():\n    n = int(input())\n    print(n * 2)\n\n\nmain()\n"),
    ("code_then_prose",
     "```python\n" + SUM + "```\n\nThis code reads all the integers from standard input and prints their "
     "sum. It runs in O(n) time.", LAST, SUM),
    ("markdown_sections",
     "### Approach\nWe count the characters with a dictionary.\n\n### Code\n```python\nfrom collections "
     "import Counter\n\ns = input().strip()\nc = Counter(s)\nprint(max(c.values()))\n```\n\n### Explanation\n"
     "1. `Counter(s)` counts each character.\n2. `max` picks the largest count.", LAST,
     "from collections import Counter\n\ns = input().strip()\nc = Counter(s)\nprint(max(c.values()))\n"),
    ("blank_lines_and_tabs_kept",
     "Solution:\n```python\nfor i in range(3):\n\tprint(i)\n\n\n# done\n```", LAST,
     "for i in range(3):\n\tprint(i)\n\n\n# done\n"),
    # --- untagged example input/output after the code (defect 1)
    ("defect1_untagged_example_after_code",
     "```python\nn = int(input())\nprint(n + 1)\n```\n\nExample:\nInput:\n```\n5\n```\nOutput:\n```\n6\n```",
     LAST, PLUS1),
    ("defect1_first_block", "```python\nn = int(input())\nprint(n + 1)\n```\n\nExample:\nInput:\n```\n5\n```\n"
     "Output:\n```\n6\n```", FIRST, PLUS1),
    ("multiline_example_io",
     "```python\n" + SUM + "```\n\n**Example Use Case:**\n\nInput:\n```\n3\n1 2 3\n```\n\nOutput:\n```\n9\n```",
     LAST, SUM),
    ("yes_no_output_block",
     "```python\nn = int(input())\nprint('YES' if n % 2 == 0 else 'NO')\n```\nFor input `4` the program "
     "prints:\n```\nYES\n```", LAST, "n = int(input())\nprint('YES' if n % 2 == 0 else 'NO')\n"),
    # --- inline backticks and the echoed instruction (defect 2)
    ("defect2_echoed_instruction_inline",
     "Here it is, enclosed in ```python YOUR CODE HERE ``` as asked:\n```python\nprint(int(input())+1)\n```",
     LAST, "print(int(input())+1)\n"),
    ("echoed_full_instruction",
     INSTRUCTION + "\n\nSure! Here is my solution:\n\n```python\n" + PLUS1 + "```", LAST, PLUS1),
    ("echoed_instruction_on_its_own_line",
     "```python YOUR CODE HERE ```\n\n```python\n" + PLUS1 + "```", LAST, PLUS1),
    ("echoed_instruction_after_code",
     "```python\n" + PLUS1 + "```\nI enclosed the code in ```python YOUR CODE HERE ``` as requested.",
     LAST, PLUS1),
    ("inline_code_spans",
     "We read `n` with ``input()`` and use a ```dict``` called `seen`:\n```python\nseen = {}\n"
     "for w in input().split():\n    seen[w] = seen.get(w, 0) + 1\nprint(len(seen))\n```", LAST,
     "seen = {}\nfor w in input().split():\n    seen[w] = seen.get(w, 0) + 1\nprint(len(seen))\n"),
    ("inline_only_no_block", "The answer is ```python print(input()) ```.", LAST, None),
    # --- drafts and corrections
    ("two_drafts_last",
     "Here's a first attempt:\n```python\nprint(sum(map(int, input().split())))\n```\nWait, this fails when "
     "the numbers span several lines. Here is a corrected version:\n```python\n" + SUM + "```", LAST, SUM),
    ("two_drafts_first",
     "Here's a first attempt:\n```python\nprint(sum(map(int, input().split())))\n```\nWait, this fails when "
     "the numbers span several lines. Here is a corrected version:\n```python\n" + SUM + "```", FIRST,
     "print(sum(map(int, input().split())))\n"),
    ("untagged_draft_then_tagged_fix_last",
     "```\nprint(input()[::-1])\n```\nOops, that keeps the newline. The correct code:\n```python\n"
     "s = input().strip()\nprint(s[::-1])\n```", LAST, "s = input().strip()\nprint(s[::-1])\n"),
    ("untagged_draft_then_tagged_fix_first",
     "```\nprint(input()[::-1])\n```\nOops, that keeps the newline. The correct code:\n```python\n"
     "s = input().strip()\nprint(s[::-1])\n```", FIRST, "s = input().strip()\nprint(s[::-1])\n"),
    # --- language tags
    ("tag_py", "```py\nprint(max(map(int, input().split())))\n```", LAST, "print(max(map(int, input().split())))\n"),
    ("tag_python3", "Solution in Python 3:\n```python3\n" + PLUS1 + "```", LAST, PLUS1),
    ("tag_Python_capitalised", "```Python\n" + PLUS1 + "```", LAST, PLUS1),
    ("tag_with_attributes", '```python title="main.py"\n' + PLUS1 + "```", LAST, PLUS1),
    ("text_output_block_after_code",
     "```python\n" + PLUS1 + "```\nOutput:\n```text\n6\n```", LAST, PLUS1),
    ("bash_block_before_and_after",
     "Save this as `main.py`:\n```python\n" + PLUS1 + "```\nRun it with:\n```bash\necho 5 | python3 main.py\n"
     "```", LAST, PLUS1),
    ("json_block", "Input format as JSON:\n```json\n{\"n\": 5}\n```\nCode:\n```python\n" + PLUS1 + "```",
     LAST, PLUS1),
    ("output_block", "```python\n" + PLUS1 + "```\n```output\n6\n```", LAST, PLUS1),
    ("plaintext_console_sh_only", "```plaintext\n5\n```\n```console\n$ python main.py\n```\n```sh\nls\n```",
     LAST, None),
    ("cpp_then_python", "In C++:\n```cpp\nint main() { return 0; }\n```\nIn Python:\n```python\n" + PLUS1 + "```",
     LAST, PLUS1),
    ("other_language_only", "```java\nclass Main { }\n```", LAST, None),
    # --- layout of fences
    ("indented_fence_in_numbered_list",
     "Steps:\n1. Read the input.\n2. Print each index:\n\n   ```python\n   n = int(input())\n"
     "   for i in range(n):\n       print(i)\n   ```\n3. Done.", LAST,
     "n = int(input())\nfor i in range(n):\n    print(i)\n"),
    ("nested_list_fence_indent_4_blank_line",
     "- Solution:\n    ```python\n    def f(x):\n        return x * 2\n\n    print(f(int(input())))\n    ```",
     LAST, "def f(x):\n    return x * 2\n\nprint(f(int(input())))\n"),
    ("closing_fence_glued_to_last_line",
     "```python\ndef solve():\n    return int(input()) * 3\nprint(solve())```\nThis triples the input.", LAST,
     "def solve():\n    return int(input()) * 3\nprint(solve())\n"),
    ("closing_fence_glued_indented",
     "```python\ndef double(x):\n    return x * 2```", LAST, "def double(x):\n    return x * 2\n"),
    ("four_backticks_hold_triple_backtick_lines",
     "````python\nTEMPLATE = '''\n```python\n{code}\n```\n'''\nprint(TEMPLATE.format(code=input()))\n````", LAST,
     "TEMPLATE = '''\n```python\n{code}\n```\n'''\nprint(TEMPLATE.format(code=input()))\n"),
    ("four_backtick_fence_not_closed_by_three", "````python\nprint(1)\n```", LAST, None),
    ("longer_closing_fence", "```python\nprint(1)\n`````\n", LAST, "print(1)\n"),
    ("crlf_line_endings",
     "Here:\r\n```python\r\nx = int(input())\r\nprint(x * x)\r\n```\r\nDone.\r\n", LAST,
     "x = int(input())\nprint(x * x)\n"),
    ("fence_with_trailing_spaces", "```python   \nprint(42)\n```   \nThat's all.", LAST, "print(42)\n"),
    # A "```" line inside a three-backtick block closes it, as in Markdown, even inside a string literal:
    # the program is cut there (and does not compile); the old closing fence then opens an unclosed block.
    ("triple_backticks_inside_string_literal",
     '```python\ns = """\n```\n"""\nprint(s)\n```', LAST, 's = """\n'),
    # --- truncation and absence
    ("unclosed_at_token_limit", "Here is the code:\n```python\nimport sys\nfor line in sys.stdin:\n    print(li",
     LAST, None),
    ("complete_block_then_unclosed",
     "```python\n" + PLUS1 + "```\nAlternatively, a faster version:\n```python\nimport sys\nprint(int(sys.std",
     LAST, PLUS1),
    ("no_code_at_all", "I'm sorry, but I need more information about the input format to solve this.", LAST, None),
    ("empty_block", "```python\n```", LAST, ""),
    ("untagged_only_code", "```\nn = int(input())\nprint(n * n)\n```", LAST, "n = int(input())\nprint(n * n)\n"),
    ("untagged_only_data", "```\n5\n```", LAST, None),
    ("untagged_code_then_untagged_io",
     "```\na, b = map(int, input().split())\nprint(a + b)\n```\nFor example, with input\n```\n2 3\n```\n"
     "the output is\n```\n5\n```", LAST, "a, b = map(int, input().split())\nprint(a + b)\n"),
    ("untagged_code_then_literal_blocks",
     "```\nprint(sorted(eval(input())))\n```\nInput:\n```\n[3, 1, 2]\n```\nOutput:\n```\n[1, 2, 3]\n```\n"
     "```\n'abc'\n```",
     LAST, "print(sorted(eval(input())))\n"),
    ("untagged_empty_block_is_not_a_program", "```\n```", LAST, None),
    ("untagged_broken_code_is_not_a_candidate", "```\nprint(input(\n```", LAST, None),
    # --- assistant prefill (HumanEval+ starter code)
    ("prefill_continued_and_closed",
     BODY + "```\n\nThis function tracks the balance and returns early.", prefill(), STARTER + BODY),
    ("prefill_then_prose_then_full_solution",
     "Here is the completed function:\n\n```python\n" + FULL + "```", prefill(), FULL),
    ("prefill_then_fenced_solution_at_once", "```python\n" + FULL + "```", prefill(), FULL),
    ("prefill_continued_without_closing_fence", BODY, prefill(), STARTER + BODY),
    ("prefill_continued_glued_close", BODY.rstrip("\n") + "```", prefill(), STARTER + BODY.rstrip("\n")),
    ("prefill_closed_then_usage_example",
     BODY + "```\n\nExample usage:\n```python\nprint(below_zero([1, -2]))\n```", prefill(), STARTER + BODY),
    ("prefill_broken_continuation_then_fix",
     "    return any(\n```\nSorry, here is the corrected version:\n```python\n" + FULL + "```", prefill(), FULL),
    ("prefill_broken_continuation_only", "    return any(\n```\n", prefill(), STARTER + "    return any(\n"),
    ("prefill_nothing_added", "```\n", prefill(), None),
    # --- prefill inside a python fence (env.prefill_format = "fenced")
    ("fenced_prefill_continued_and_closed", BODY + "```\n\nThis tracks the balance.", fenced(), STARTER + BODY),
    ("fenced_prefill_closed_at_once", "```\n\nThis function checks the balance.", fenced(), None),
    ("fenced_prefill_closed_at_once_then_solution",
     "```\nHere is the full solution:\n```python\n" + FULL + "```", fenced(), FULL),
    ("fenced_prefill_cut_before_closing", BODY + "    # and", fenced(), None),
    ("fenced_prefill_continued_then_usage_example",
     BODY + "```\n\nExample:\n```\nTrue\n```", fenced(), STARTER + BODY),
    # --- chat-template text at the end of a response
    ("llama_eot_after_block", "```python\n" + PLUS1 + "```<|eot_id|>", LAST, PLUS1),
    ("llama_imagined_next_turn",
     "```python\n" + PLUS1 + "```<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nNow print n + 2.<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n```python\nprint(int(input()) + 2)\n```", LAST, PLUS1),
    ("chatml_im_end_and_next_turn",
     "```python\n" + PLUS1 + "```<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n"
     "```python\nprint('you are welcome')\n```", LAST, PLUS1),
    ("chatml_roles_without_markers",
     "```python\n" + PLUS1 + "```\nuser\nCan you explain it?\nassistant\nSure, it adds one.", LAST, PLUS1),
    ("prefill_continuation_then_eot", BODY + "<|eot_id|>", prefill(), STARTER + BODY),
    # --- known limit (module docstring): a tagged usage example after the solution is a candidate
    ("tagged_usage_example_wins",
     "```python\ndef double(x):\n    return 2 * x\n```\nUsage:\n```python\nprint(double(4))\n```", LAST,
     "print(double(4))\n"),
]

# Verbatim responses of SmolLM2-135M-Instruct (greedy, HumanEval+ starter code as a raw or fenced
# prefill; captured from `python -m rlef_jax.evaluate --config=configs/smollm2.py`), each with the program
# read off by hand: prefill + the response up to its first fence line, or none. Same row format as
# RESPONSES.
REAL_SMOLLM2_RESPONSES = [
    (r["id"], r["response"], {"prefill": r["prefill"]}, r["expected"])
    for r in json.loads((pathlib.Path(__file__).parent / "fixtures" / "smollm2_responses.json").read_text())
]


@pytest.mark.parametrize("name,response,kwargs,expected", RESPONSES + REAL_SMOLLM2_RESPONSES,
                         ids=[r[0] for r in RESPONSES + REAL_SMOLLM2_RESPONSES])
def test_realistic_responses(name, response, kwargs, expected):
    assert extract.extract_code(response, **kwargs) == expected


def test_table_is_large_and_ids_are_unique():
    assert len(RESPONSES) >= 45
    assert len({r[0] for r in RESPONSES + REAL_SMOLLM2_RESPONSES}) == len(RESPONSES + REAL_SMOLLM2_RESPONSES)


def test_validity_of_table_programs():
    table = dict((r[0], r) for r in RESPONSES)
    valid = lambda name: extract.is_valid_code(extract.extract_code(table[name][1], **table[name][2]))
    assert valid("prose_then_code") and valid("prefill_continued_and_closed")
    assert not valid("empty_block") and not valid("triple_backticks_inside_string_literal")
    assert not valid("prefill_broken_continuation_only") and not valid("no_code_at_all")


@pytest.mark.parametrize("text,last,first", [
    ("```python\nA = 1\n```", "A = 1\n", "A = 1\n"),
    ("draft:\n```python\nA = 1\n```\nfixed:\n```py\nA = 2\n```\n", "A = 2\n", "A = 1\n"),
    ("```\nA = 3\n```", "A = 3\n", "A = 3\n"),
    ("```cpp\nint a;\n```\n```python3\nA = 4\n```", "A = 4\n", "A = 4\n"),
    ("```python\nA = 5\n", None, None),               # cut before the closing fence
    ("```python A = 6 ```", None, None),               # the prompt's inline form is not a fence
    ("```\nA = 7\n```\n```\nA = 8\n```", "A = 8\n", "A = 7\n"),  # untagged programs only
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
    # The response may continue the prefill's last line.
    assert extract.extract_code("x + 1\n```", prefill="def f(x):\n    return ") == "def f(x):\n    return x + 1\n"


def test_fenced_blocks_languages():
    blocks = extract.fenced_blocks("```Python3 extra\na\n```\n```\nb\n```\n```text\nc\n```\n")
    assert [(b.language, b.is_python, b.is_untagged, b.code) for b in blocks] == [
        ("python3", True, False, "a\n"), ("", False, True, "b\n"), ("text", False, False, "c\n")]


@pytest.mark.parametrize("code,data", [
    ("5\n", True), ("-1\n", True), ("[1, 2, 3]\n", True), ("'abc'\n", True), ("YES\nNO\n", True),
    ("1 2 3\n", True), ("{'a': (1, 2)}\n", True), ("", True),
    ("print(5)\n", False), ("x = 5\n", False), ("n = int(input())\n", False), ("import sys\n", False),
])
def test_looks_like_data(code, data):
    assert extract.looks_like_data(code) == data


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


# --- property: a program in a tagged block survives prose, inline backticks and untagged example blocks

_NAMES = ("n", "total", "xs", "s", "best")
_STRINGS = ('"a`b"', "'``'", '"```"', "'x'", '" ```python "')


def _expr(rng, depth=0):
    kind = rng.randrange(5 if depth < 2 else 3)
    if kind == 0:
        return str(rng.randrange(100))
    if kind == 1:
        return rng.choice(_NAMES)
    if kind == 2:
        return rng.choice(_STRINGS)
    if kind == 3:
        return f"({_expr(rng, depth + 1)} {rng.choice('+-*')} {_expr(rng, depth + 1)})"
    return f"len([{_expr(rng, depth + 1)}, {_expr(rng, depth + 1)}])"


def _statements(rng, indent, depth):
    lines = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6 if depth < 2 else 3)
        pad = "    " * indent
        if kind == 0:
            lines.append(f"{pad}{rng.choice(_NAMES)} = {_expr(rng)}")
        elif kind == 1:
            lines.append(f"{pad}print({_expr(rng)})")
        elif kind == 2:
            lines.append(f"{pad}# note: uses `{rng.choice(_NAMES)}` and ``` inline")
        elif kind == 3:
            lines.append(f"{pad}if {_expr(rng)}:")
            lines += _statements(rng, indent + 1, depth + 1)
        elif kind == 4:
            lines.append(f"{pad}for {rng.choice(_NAMES)} in range({rng.randrange(5)}):")
            lines += _statements(rng, indent + 1, depth + 1)
        else:
            lines.append("")
            lines.append(f"{pad}def f{rng.randrange(9)}({rng.choice(_NAMES)}):")
            lines += _statements(rng, indent + 1, depth + 1)
            lines.append(f"{pad}    return {_expr(rng)}")
    lines.append(f"{'    ' * indent}print({_expr(rng)})")  # a block of comments alone would not compile
    return lines


def random_program(rng):
    names = "".join(f"{name} = {rng.randrange(10)}\n" for name in _NAMES)
    return names + "\n".join(_statements(rng, 0, 0)) + "\n"


def test_property_program_survives_its_surroundings():
    rng = random.Random(0)
    for _ in range(300):
        p = random_program(rng)
        assert extract.is_valid_code(p), p
        prose = rng.choice(["Here is my solution.", "Sure! The code below reads the input.", INSTRUCTION])
        after = rng.choice([
            "The variable `n` holds the count; I used ```python YOUR CODE HERE ``` as asked.",
            "Enclosed in ```python YOUR CODE HERE ```, with `print` for output.",
            "```python YOUR CODE HERE ``` was the format; `xs` is a list.",
        ])
        response = f"{prose}\n```python\n{p}```\n{after}\n```\n{rng.randrange(-5, 1000)}\n```"
        assert extract.extract_code(response) == p, response
        assert extract.extract_code(response, rule="first_block") == p, response
