"""Chat tokenizer: a transformers tokenizer plus the Llama 3 Instruct chat format (paper §1.1).

The paper's dialogues are plain Llama 3 Instruct chats with no system message (§1.1 [I]). `ChatTokenizer`
renders them exactly as transformers' `apply_chat_template` does with the Llama 3.0 Instruct template, and
exposes the per-message pieces so that an episode's token list can grow by appending ids, never by
re-tokenising the history (token-in/token-out):

    encode_dialog(messages) == [bos] + sum(encode_message(m) for m in messages) + assistant_header()

The Llama 3 tokenizer itself ships as a tiktoken BPE file (`tokenizer.model`, e.g. inside the
`llama-models` wheel); `convert_llama3_tiktoken` turns it into a transformers tokenizer directory.
The file is under the Llama Community License: convert it where it is needed, never commit it.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
FINETUNE_PAD = "<|finetune_right_pad_id|>"

# The Llama 3.0 Instruct template (Meta-Llama-3-*-Instruct tokenizer_config.json): no default system
# message; content is trimmed (`| trim`, Python `str.strip()`).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# The pre-tokenisation regex of Llama 3 (llama_models/llama3/tokenizer.py `pat_str`).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

NUM_SPECIAL_TOKENS = 256
_CONVERTER_VERSION = "1"  # part of the cache key: bump when convert_llama3_tiktoken's output changes


def llama3_special_tokens() -> list[str]:
    """The 256 Llama 3.1 special tokens in id order (ids 128000..128255), as llama_models defines them."""
    named = [
        BEGIN_OF_TEXT, END_OF_TEXT, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        FINETUNE_PAD, "<|step_id|>", START_HEADER, END_HEADER, "<|eom_id|>", EOT, "<|python_tag|>",
        "<|image|>",
    ]
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(named))]
    return named + reserved


def convert_llama3_tiktoken(model_file, out_dir) -> pathlib.Path:
    """Converts a Llama 3 tiktoken `tokenizer.model` into a transformers tokenizer directory.

    The result loads with `AutoTokenizer.from_pretrained(out_dir)`: byte-level BPE with the Llama 3
    regex, the 256 special tokens at ids 128000.., `<|begin_of_text|>` prepended on `add_special_tokens`
    (as in Meta's HF release), eos `<|eot_id|>` and the Llama 3 Instruct chat template.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model_file = pathlib.Path(model_file)
    if not model_file.is_file():
        raise FileNotFoundError(
            f"Llama 3 tokenizer file {model_file} does not exist: pass the tiktoken `tokenizer.model` "
            "(e.g. from the `llama-models` wheel: llama_models/llama3/tokenizer.model)."
        )
    specials = llama3_special_tokens()
    backend = TikTokenConverter(
        vocab_file=str(model_file), pattern=LLAMA3_PATTERN, extra_special_tokens=specials
    ).converted()
    bos_id = backend.token_to_id(BEGIN_OF_TEXT)
    if bos_id != 128000 or backend.get_vocab_size() != 128256:
        raise ValueError(
            f"{model_file} is not a Llama 3 tokenizer.model: got {backend.get_vocab_size()} tokens with "
            f"{BEGIN_OF_TEXT} at id {bos_id} (expected 128256 tokens, id 128000)."
        )
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BEGIN_OF_TEXT} $A", pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT} $B",
            special_tokens=[(BEGIN_OF_TEXT, bos_id)],
        ),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BEGIN_OF_TEXT, eos_token=EOT,
        chat_template=LLAMA3_CHAT_TEMPLATE, model_max_length=131072,
        model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False,
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def llama_models_tokenizer_file() -> pathlib.Path:
    """The Llama 3 `tokenizer.model` inside the installed `llama-models` package."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("llama_models")
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The `llama-models` package is not installed: `pip install llama-models` (it carries the "
            "Llama 3 tokenizer.model), or convert your own file with convert_llama3_tiktoken."
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llama-models package; reinstall it.")
    return path


def cached_llama3_tokenizer_dir(model_file=None, cache_dir=None) -> pathlib.Path:
    """Converts `model_file` (default: the llama-models one) once and returns the cached directory.

    The cache key is the file's SHA-256; the default cache root is `$RLEF_JAX_CACHE` or
    `~/.cache/rlef_jax`. Concurrent callers are safe: each converts into a private directory and renames
    it into place.
    """
    model_file = pathlib.Path(model_file) if model_file is not None else llama_models_tokenizer_file()
    root = pathlib.Path(cache_dir or os.environ.get("RLEF_JAX_CACHE") or pathlib.Path.home() / ".cache/rlef_jax")
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:16]
    target = root / f"llama3_tokenizer_v{_CONVERTER_VERSION}_{digest}"
    if (target / "tokenizer.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=target.name + ".", dir=root))
    try:
        convert_llama3_tiktoken(model_file, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "tokenizer.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class ChatTokenizer:
    """A transformers tokenizer with the Llama 3 chat format and token-in/token-out helpers."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        vocab = hf_tokenizer.get_vocab()
        missing = [t for t in (BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT) if t not in vocab]
        if missing:
            raise ValueError(
                f"Tokenizer {getattr(hf_tokenizer, 'name_or_path', '')!r} lacks the Llama 3 chat tokens "
                f"{missing}; use a Llama 3 tokenizer (see rlef_jax.tokenizer.convert_llama3_tiktoken)."
            )
        self.bos_id: int = vocab[BEGIN_OF_TEXT]
        self.eot_id: int = vocab[EOT]
        eos_id = vocab.get(END_OF_TEXT, self.eot_id)
        self.stop_ids: frozenset[int] = frozenset({self.eot_id, eos_id})
        if FINETUNE_PAD in vocab:
            self.pad_id: int = vocab[FINETUNE_PAD]
        elif hf_tokenizer.pad_token_id is not None:
            self.pad_id = hf_tokenizer.pad_token_id
        else:
            self.pad_id = eos_id
        self._start_header_id = vocab[START_HEADER]
        self._end_header_id = vocab[END_HEADER]
        self._assistant_header = self._header("assistant")

    @classmethod
    def load(cls, path) -> "ChatTokenizer":
        """Loads a transformers tokenizer from a local directory (never from the Hub)."""
        path = pathlib.Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"Tokenizer directory {path} does not exist: point it at a local transformers tokenizer "
                "(convert Meta's tokenizer.model with rlef_jax.tokenizer.convert_llama3_tiktoken)."
            )
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (special-token text in it is still parsed)."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens skipped."""
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def _header(self, role: str) -> list[int]:
        return [self._start_header_id, *self.encode(role), self._end_header_id, *self.encode("\n\n")]

    def encode_message(self, role: str, content: str) -> list[int]:
        """`<|start_header_id|>role<|end_header_id|>\\n\\n` + content.strip() + `<|eot_id|>`.

        Content is stripped as the template's `| trim` does. The header's "\\n\\n" always forms its own
        pre-token (content after strip starts with a non-space), so this equals tokenising the whole
        rendered message at once.
        """
        if not isinstance(content, str):
            raise TypeError(f"Message content must be a str, got {type(content).__name__} for role {role!r}.")
        return [*self._header(role), *self.encode(content.strip()), self.eot_id]

    def assistant_header(self) -> list[int]:
        """`<|start_header_id|>assistant<|end_header_id|>\\n\\n`: the generation prompt."""
        return list(self._assistant_header)

    def encode_dialog(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """The Llama 3 chat rendering of `messages`; equals `apply_chat_template` token for token."""
        if not messages:
            raise ValueError("encode_dialog needs at least one message (the first user turn).")
        ids = [self.bos_id]
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise ValueError(f"Message {i} must be a mapping with 'role' and 'content', got {message!r}.")
            ids += self.encode_message(message["role"], message["content"])
        if add_generation_prompt:
            ids += self._assistant_header
        return ids
