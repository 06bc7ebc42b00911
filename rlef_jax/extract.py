"""Code extraction from a model response, and what "valid code" means (paper §2.2; rlef-paper.md §1.3 [U]).

The paper gives −0.2 to a non-final response that "does not contain valid code" but leaves the rule
open. Ours:

* A *fenced block* is three backticks, an info string up to the end of that line, a newline, the code,
  and the next three backticks. Only blocks whose info string is empty or starts with `python`,
  `python3` or `py` count (other languages are not Python code). A block without its closing backticks
  (a response cut by the token limit) does not count.
* `last_block` (default) takes the last such block: a model that drafts and then corrects itself is
  judged on its correction. `first_block` takes the first.
* With an assistant prefill (HumanEval+ starter code, paper App. C.4), the prefill and the response are
  one text: if it holds a block, the rule above applies; otherwise the code is the whole text up to the
  first three backticks (the model continued the prefilled code and closed it).
* The code is *valid* when it is non-blank and compiles (`compile(code, "main.py", "exec")`, as the
  executor does: this also rejects what only the compiler catches, e.g. `return` outside a function).
  Running it is the executor's job, not this module's.
"""
from __future__ import annotations

import re
import traceback

EXTRACTION_RULES = ("last_block", "first_block")
PROGRAM_FILENAME = "main.py"  # the executor compiles programs under this name
_BLOCK_RE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("", "python", "python3", "py")


def fenced_python_blocks(text: str) -> list[str]:
    """The bodies of all complete fenced Python blocks of `text`, in order."""
    blocks = []
    for match in _BLOCK_RE.finditer(text):
        info = match.group(1).strip().split()
        tag = info[0].lower() if info else ""
        if tag in _PYTHON_TAGS:
            blocks.append(match.group(2))
    return blocks


def extract_code(response: str, *, rule: str = "last_block", prefill: str | None = None) -> str | None:
    """The program of a response under `rule`, or None when it has none (see the module docstring)."""
    if rule not in EXTRACTION_RULES:
        raise ValueError(f"Unknown code_extraction rule {rule!r}; expected one of {EXTRACTION_RULES}.")
    text = response if prefill is None else prefill + response
    blocks = fenced_python_blocks(text)
    if blocks:
        return blocks[-1] if rule == "last_block" else blocks[0]
    if prefill is not None:
        return text.split("```", 1)[0]
    return None


def syntax_error(code: str) -> str | None:
    """The compiler's error message for `code` (`traceback.format_exception_only`, the executor's
    format for a program that does not compile), or None when it compiles."""
    try:
        compile(code, PROGRAM_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as e:
        return "".join(traceback.format_exception_only(type(e), e))
    return None


def is_valid_code(code: str | None) -> bool:
    """Whether extracted code counts as "valid code" for the −0.2 penalty (paper §2.2): present, compiles."""
    return code is not None and bool(code.strip()) and syntax_error(code) is None
