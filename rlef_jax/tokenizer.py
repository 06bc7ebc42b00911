"""Chat tokenizer: a transformers tokenizer plus its checkpoint's own chat template (paper §2.1).

The dialogue format is whatever the tokenizer directory's Jinja `chat_template` renders (Llama 3.0,
3.1/3.2 Instruct, ChatML, ...), rendered by transformers' `apply_chat_template`. An episode grows by
appending ids, never by re-tokenising its history (token-in/token-out):

    prompt    = encode_dialog(messages)                      # the template's rendering, tokenised
    response  = the sampled ids (ending with a stop id, or cut: + end_of_turn_id, not the policy's)
    follow-up = followup_ids(messages + [assistant], "user", feedback)
                # what the template renders after the assistant's end-of-turn token: the rest of that
                # turn (ChatML's "\n"), the user message and the next generation prompt

For an append-only template (each rendering is a prefix of the next, as for Llama 3.x and ChatML) and a
response whose ids are its text's own tokenisation, the concatenation equals tokenising the template's
rendering of the whole dialogue (tests/tokenizer_test.py, for each template). This holds because the
pieces are cut right after a special token, where the tokenizer starts a new segment anyway.

Stop ids come from the template (the special token that ends an assistant turn: `<|eot_id|>`,
`<|im_end|>`), the tokenizer's eos token and the directory's `generation_config.json` `eos_token_id`
(Llama 3.1: `<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`).

The Llama 3 tokenizer itself ships as a tiktoken BPE file (`tokenizer.model`, e.g. inside the
`llama-models` wheel); `convert_llama3_tiktoken` turns it into a transformers tokenizer directory.
The file is under the Llama Community License: convert it where it is needed, never commit it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rlef_jax import errors

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
_CONVERTER_VERSION = "2"  # part of the cache key: bump when convert_llama3_tiktoken's output changes


def llama3_special_tokens() -> list[str]:
    """The 256 Llama 3.1 special tokens in id order (ids 128000..128255), as llama_models defines them."""
    named = [
        BEGIN_OF_TEXT, END_OF_TEXT, "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        FINETUNE_PAD, "<|step_id|>", START_HEADER, END_HEADER, "<|eom_id|>", EOT, "<|python_tag|>",
        "<|image|>",
    ]
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(named))]
    return named + reserved


def convert_llama3_tiktoken(model_file, out_dir, chat_template: str = LLAMA3_CHAT_TEMPLATE) -> pathlib.Path:
    """Converts a Llama 3 tiktoken `tokenizer.model` into a transformers tokenizer directory.

    The result loads with `AutoTokenizer.from_pretrained(out_dir)`: byte-level BPE with the Llama 3
    regex, the 256 special tokens at ids 128000.., `<|begin_of_text|>` prepended on `add_special_tokens`
    (as in Meta's HF release), eos `<|eot_id|>`, `chat_template` (default: the Llama 3.0 Instruct one;
    a Llama 3.1/3.2 checkpoint's own directory carries its own) and a `generation_config.json` whose
    eos ids are those of Meta's 3.1 release (`<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`).
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
        chat_template=chat_template, model_max_length=131072,
        model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False,
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    eos_ids = [backend.token_to_id(t) for t in (END_OF_TEXT, "<|eom_id|>", EOT)]
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": bos_id, "eos_token_id": eos_ids}, indent=2) + "\n")
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
    """A transformers tokenizer, its chat template and the token-in/token-out pieces of a dialogue.

    `template_kwargs` are extra variables for the template (e.g. Llama 3.2's `date_string`, which it
    otherwise fills with today's date); `extra_stop_ids` are added to the stop ids (`load` passes the
    directory's `generation_config.json` `eos_token_id`).
    """

    _PROBE = "\x00RLEF_JAX_PROBE\x00"  # assistant content used to find what ends an assistant turn

    def __init__(self, hf_tokenizer, *, template_kwargs: Mapping[str, Any] | None = None,
                 extra_stop_ids: Iterable[int] = (), name: str = ""):
        self.hf = hf_tokenizer
        self.name = name or getattr(hf_tokenizer, "name_or_path", "") or "tokenizer"
        self.template_kwargs = dict(template_kwargs or {})
        if not getattr(hf_tokenizer, "chat_template", None):
            raise errors.InputError(
                f"Tokenizer {self.name!r} has no chat_template: use the Instruct model's own tokenizer "
                "directory (its tokenizer_config.json or chat_template.jinja carries the template).")
        vocab = hf_tokenizer.get_vocab()
        self._special_texts = sorted(
            (t for t in getattr(hf_tokenizer, "all_special_tokens", []) if t),
            key=len, reverse=True)
        self._special_texts += sorted(
            (t.content for t in getattr(hf_tokenizer, "added_tokens_decoder", {}).values()
             if getattr(t, "special", False) and t.content not in self._special_texts),
            key=len, reverse=True)
        end_text, self.after_turn_end = self._probe_turn_end()
        self.end_of_turn_id: int = vocab[end_text]
        eos_id = hf_tokenizer.eos_token_id
        self.stop_ids: frozenset[int] = frozenset(
            {self.end_of_turn_id, *([eos_id] if eos_id is not None else []), *map(int, extra_stop_ids)})
        bad = sorted(i for i in self.stop_ids if not 0 <= i < len(hf_tokenizer))
        if bad:
            raise errors.InputError(f"Tokenizer {self.name!r}: stop ids {bad} are outside its vocabulary "
                                    f"[0, {len(hf_tokenizer)}); check generation_config.json's eos_token_id.")
        if FINETUNE_PAD in vocab:
            self.pad_id: int = vocab[FINETUNE_PAD]
        elif hf_tokenizer.pad_token_id is not None:
            self.pad_id = hf_tokenizer.pad_token_id
        else:
            self.pad_id = eos_id if eos_id is not None else self.end_of_turn_id

    @classmethod
    def load(cls, path, *, template_kwargs: Mapping[str, Any] | None = None) -> "ChatTokenizer":
        """Loads a transformers tokenizer directory (never from the Hub) with its chat template and,
        when present, its `generation_config.json` stop ids."""
        path = pathlib.Path(path)
        if not path.is_dir():
            raise errors.MissingPathError(
                f"Tokenizer directory {path} does not exist: point config.tokenizer.path at the Instruct "
                "model's tokenizer directory (python -m rlef_jax.convert writes one next to converted "
                "weights; a Llama 3 tokenizer.model converts with rlef_jax.tokenizer.convert_llama3_tiktoken).")
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise errors.InputError(f"Tokenizer directory {path} could not be loaded by transformers: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        return cls(hf, template_kwargs=template_kwargs, extra_stop_ids=generation_stop_ids(path),
                   name=str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int | None:
        """The tokenizer's bos token id (the template decides whether a dialogue starts with it)."""
        return self.hf.bos_token_id

    @property
    def eot_id(self) -> int:
        """Alias of `end_of_turn_id` (the Llama 3 name)."""
        return self.end_of_turn_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (special-token text in it is still parsed)."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens skipped."""
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The template's text for `messages`, as transformers' `apply_chat_template` renders it."""
        if not messages:
            raise ValueError("A dialogue needs at least one message (the first user turn).")
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise ValueError(f"Message {i} must be a mapping with 'role' and 'content', got {message!r}.")
            if not isinstance(message["content"], str):
                raise TypeError(f"Message content must be a str, got {type(message['content']).__name__} "
                                f"for role {message['role']!r}.")
        return self.hf.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt,
            **self.template_kwargs)

    def encode_dialog(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
                      ) -> list[int]:
        """The template's rendering of `messages`, tokenised (= `apply_chat_template(tokenize=True)`)."""
        return self.encode(self.render(messages, add_generation_prompt))

    def followup_ids(self, history: Sequence[Mapping[str, str]], role: str, content: str) -> list[int]:
        """The ids that follow an assistant turn's end-of-turn token when a `role` message with
        `content` and the next generation prompt are appended to `history` (which ends with that
        assistant message): the rest of the assistant turn, the message, the generation prompt."""
        if not history or history[-1].get("role") != "assistant":
            raise ValueError("followup_ids needs a history that ends with the assistant's message.")
        before = self.render(history, add_generation_prompt=False)
        after = self.render([*history, {"role": role, "content": content}], add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError(
                f"The chat template of {self.name!r} renders earlier turns differently once a message is "
                "added; token-in/token-out dialogues need an append-only template.")
        tail = self.end_of_turn_text + self.after_turn_end
        if not before.endswith(tail):
            raise ValueError(f"The chat template of {self.name!r} does not end the assistant turn with "
                             f"{tail!r} for this history; cannot continue the dialogue token by token.")
        return self.encode(self.after_turn_end + after[len(before):])

    @property
    def end_of_turn_text(self) -> str:
        return self.hf.convert_ids_to_tokens(self.end_of_turn_id)

    def _probe_turn_end(self) -> tuple[str, str]:
        """(the special token that ends an assistant turn, the text the template puts after it)."""
        text = self.render([{"role": "user", "content": "u"}, {"role": "assistant", "content": self._PROBE}],
                           add_generation_prompt=False)
        if text.count(self._PROBE) != 1:
            raise errors.InputError(f"The chat template of {self.name!r} does not render assistant messages "
                                    "verbatim; it cannot be used for token-in/token-out dialogues.")
        rest = text.split(self._PROBE, 1)[1]
        for special in self._special_texts:
            if rest.startswith(special):
                return special, rest[len(special):]
        raise errors.InputError(
            f"The chat template of {self.name!r} does not end an assistant turn with a special token "
            f"(after the content it renders {rest[:40]!r}); the sampler needs one to stop on.")


def generation_stop_ids(directory) -> list[int]:
    """`eos_token_id` of `directory/generation_config.json` (an int or a list; [] when absent)."""
    path = pathlib.Path(directory) / "generation_config.json"
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError) as e:
        raise errors.InputError(f"{path} is not valid JSON ({e}); fix or remove it.") from None
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise errors.InputError(f"{path}: eos_token_id must be an int or a list of ints, got {value!r}.")
    return values
