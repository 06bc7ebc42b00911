"""Code extraction from a model response, and what "valid code" means (paper §2.2; docs/method.md §1.3).

The paper gives −0.2 to a non-final response that "does not contain valid code" but leaves the rule
open. Ours is written for what Instruct models really answer: prose around the code, example input and
output in more fenced blocks, the prompt's instruction ("```python YOUR CODE HERE ```") echoed, drafts
and corrections, fences inside list items.

* *Fenced blocks* are found line by line, as in CommonMark (not by pairing backticks anywhere, which
  lets an inline "```python YOUR CODE HERE ```" pair with the real fence). An opening fence is a line
  whose text after optional indentation starts with three or more backticks followed by an info string
  without backticks (with a backtick it is inline code, as in CommonMark). The block closes at the next
  line that, after indentation, starts with at least as many backticks (whatever follows them).
  Backticks inside a line never open or close a block (but for the leniency below), so four-backtick
  fences may hold "```" lines. Content lines lose up to the opening fence's indentation (fences inside
  list items are indented); CRLF reads as LF and every kept line ends with "\\n". A block without its
  closing fence (a response cut by the token limit) does not count, and nothing after its opening fence
  does either.
* One leniency, for small models that glue the fence to the last line: a content line that ends with at
  least as many backticks as the opening fence (e.g. "    return x```") closes the block, and its text
  before the backticks is kept as code.
* The first word of the info string, case-insensitive, is the language: `python`, `python3` and `py`
  make a *tagged Python* block, an empty info string an *untagged* block; any other tag (text, bash,
  json, output, plaintext, console, cpp, ...) is not Python.
* Candidates: when the response has a tagged Python block, only tagged Python blocks are candidates
  (untagged blocks are then the example input/output that models add). Otherwise the untagged blocks
  are, except those that are plainly data rather than a program: a block that does not compile, or whose
  statements are all bare literals or names ("5", "[1, 2, 3]", "'abc'", "YES"; "1 2 3" does not
  compile). `last_block` (default) takes the last candidate: a model that drafts and then corrects
  itself is judged on its correction. `first_block` takes the first.
* With an assistant prefill (HumanEval+ starter code, paper App. C.4: imports, signature and docstring
  start the assistant turn and the model continues them): the text is prefill + response, and the
  program is that text up to the first line of the response that starts a fence (the model closed its
  code block; a glued "...```" also ends it, keeping the line's text before the backticks), or all of it
  when there is none, provided the response adds non-blank text before that point and the program
  compiles. Otherwise (the model wrote prose, or opened a block at once, and then wrote a full solution)
  the candidate rule above applies to the response alone. When it finds nothing there and the response
  did add text, it applies to the text after that first fence line (a broken continuation closed by
  "```" and followed by a corrected solution: read whole, its fences pair the wrong way round and give
  only prose blocks, which do not compile). When that finds nothing either, the prefill program is
  returned all the same, so that a broken continuation gets the compiler's message as feedback rather
  than "no code".
* A prefill that itself opens a fenced block (`env.prefill_format = "fenced"`: "```python\n" + the
  starter code) is continued inside that block: prefill + response is one text for the block rule above
  (the model closes the block; a response cut before closing it has no program). A response that closes
  the block without adding non-blank text to it wrote no program there, as with a raw prefill: the
  block rule then applies to the text after that fence line.
* Chat-template markers written out as text (`<|eot_id|>`, `<|im_end|>`, `<|start_header_id|>`,
  `<|im_start|>`, ...; the decoder drops them as special tokens) end the response: what follows is an
  imagined next turn, not this answer.
* The code is *valid* when it is non-blank and compiles (`compile(code, "main.py", "exec")`, as the
  executor does: this also rejects what only the compiler catches, e.g. `return` outside a function).
  Running it is the executor's job, not this module's.

Known limits, kept for simplicity: a tagged block of example usage or output after the solution
("```python\\nprint(f(3))\\n```") is a candidate like any tagged block, and a "```" line inside a
three-backtick block (e.g. in a string literal) closes it, as in Markdown.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import traceback

EXTRACTION_RULES = ("last_block", "first_block")
PROGRAM_FILENAME = "main.py"  # the executor compiles programs under this name
PYTHON_TAGS = ("python", "python3", "py")
CHAT_MARKERS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|begin_of_text|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>")
_CHAT_MARKER_RE = re.compile("|".join(re.escape(m) for m in CHAT_MARKERS))
_FENCE_RE = re.compile(r"([ \t]*)(`{3,})(.*)")  # indentation, backticks, info string (fullmatch a line)


@dataclasses.dataclass(frozen=True)
class Block:
    """A complete fenced block: its info string (stripped) and its code (dedented, each line ending "\\n")."""
    info: str
    code: str

    @property
    def language(self) -> str:
        """The info string's first word, lowercased ("" for an untagged block)."""
        words = self.info.split()
        return words[0].lower() if words else ""

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON_TAGS

    @property
    def is_untagged(self) -> bool:
        return not self.info


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").split("\n")


def _opening_fence(line: str) -> tuple[str, int, str] | None:
    """(indentation, number of backticks, info string) when `line` opens a fenced block, else None."""
    match = _FENCE_RE.fullmatch(line)
    if match is None or "`" in match.group(3):
        return None
    return match.group(1), len(match.group(2)), match.group(3).strip()


def _starts_fence(line: str, ticks: int = 3) -> bool:
    """Whether `line`, after indentation, starts with at least `ticks` backticks (closes such a block)."""
    return line.lstrip(" \t").startswith("`" * ticks)


def _glued_close(line: str, ticks: int = 3) -> str | None:
    """The code before a glued closing fence ("    return x```" -> "    return x"), or None."""
    line = line.rstrip(" \t")
    code = line.rstrip("`")
    if len(line) - len(code) < ticks or not code.strip():
        return None
    return code


def _dedent(line: str, indent: str) -> str:
    """`line` without up to `len(indent)` leading spaces or tabs (the opening fence's indentation)."""
    n = 0
    while n < len(indent) and n < len(line) and line[n] in " \t":
        n += 1
    return line[n:]


def fenced_blocks(text: str) -> list[Block]:
    """All complete fenced blocks of `text`, in order, whatever their language (module docstring)."""
    lines = _lines(text)
    blocks = []
    i = 0
    while i < len(lines):
        fence = _opening_fence(lines[i])
        if fence is None:
            i += 1
            continue
        indent, ticks, info = fence
        body = []
        for j in range(i + 1, len(lines)):
            if _starts_fence(lines[j], ticks):
                break
            glued = _glued_close(lines[j], ticks)
            if glued is not None:
                body.append(glued)
                break
            body.append(lines[j])
        else:
            break  # unclosed: the rest of the text is inside it
        blocks.append(Block(info=info, code="".join(_dedent(line, indent) + "\n" for line in body)))
        i = j + 1
    return blocks


def _is_datum(node: ast.expr) -> bool:
    if isinstance(node, (ast.Constant, ast.Name)):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _is_datum(node.operand)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_datum(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(k is None or _is_datum(k) for k in node.keys) and all(_is_datum(v) for v in node.values)
    return False


def looks_like_data(code: str) -> bool:
    """Whether an untagged block is plainly data, not a program: it does not compile, or every statement
    is a bare literal or name ("5", "-1", "[1, 2, 3]", "'abc'", "YES"); an empty block holds no program."""
    if syntax_error(code) is not None:
        return True
    return all(isinstance(s, ast.Expr) and _is_datum(s.value) for s in ast.parse(code).body)


def candidate_blocks(text: str) -> list[str]:
    """The codes of the blocks that may be the program: the tagged Python blocks if there are any, else
    the untagged blocks that are not plainly data (module docstring)."""
    blocks = fenced_blocks(text)
    tagged = [b.code for b in blocks if b.is_python]
    if tagged:
        return tagged
    return [b.code for b in blocks if b.is_untagged and not looks_like_data(b.code)]


def end_of_turn(response: str) -> str:
    """`response` up to the first chat-template marker written out as text (module docstring)."""
    match = _CHAT_MARKER_RE.search(response)
    return response if match is None else response[:match.start()]


def _prefill_split(prefill: str, response: str) -> tuple[str | None, str]:
    """(program, rest): prefill + response up to the response's first fence line (or glued closing
    backticks), or all of it, with None when the response adds only whitespace before that point; and
    the text after that line ("" when there is none)."""
    prefill = prefill.replace("\r\n", "\n")
    text = prefill + response.replace("\r\n", "\n")
    start = text.rfind("\n", 0, len(prefill)) + 1  # the line where the response starts
    end, rest = len(text), ""
    for line in text[start:].split("\n"):
        if _starts_fence(line):
            end = start
        elif (glued := _glued_close(line)) is not None:
            end = start + len(glued)
        else:
            start += len(line) + 1
            continue
        rest = text[start + len(line) + 1:]
        break
    program = text[:end] if text[len(prefill):end].strip() else None
    return program, rest


def extract_code(response: str, *, rule: str = "last_block", prefill: str | None = None) -> str | None:
    """The program of a response under `rule`, or None when it has none (see the module docstring)."""
    if rule not in EXTRACTION_RULES:
        raise ValueError(f"Unknown code_extraction rule {rule!r}; expected one of {EXTRACTION_RULES}.")
    response = end_of_turn(response)
    if prefill is not None and _opening_fence(_lines(prefill)[0]) is not None:
        # A prefill that opens a fenced block ("```python\n" + starter code): the response continues
        # inside it, so prefill and response are one text for the block rule; unless the response
        # closes that block without adding to it (no program of its own), as with a raw prefill.
        added, rest = _prefill_split(prefill, response)
        candidates = candidate_blocks(prefill + response if added is not None else rest)
        return (candidates[-1] if rule == "last_block" else candidates[0]) if candidates else None
    if prefill is None:
        program, texts = None, (response,)
    else:
        program, rest = _prefill_split(prefill, response)
        if program is not None and syntax_error(program) is None:
            return program
        texts = (response, rest) if program is not None else (response,)
    for text in texts:
        candidates = candidate_blocks(text)
        if candidates:
            return candidates[-1] if rule == "last_block" else candidates[0]
    return program


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
