"""ChatTokenizer against transformers' apply_chat_template and Meta's own tiktoken tokenizer.

The Llama 3 tokenizer.model comes from the installed `llama-models` wheel and is converted at test time
(never committed: Llama licence).
"""
import gzip
import json
import pathlib
import random
import shutil

import pytest

from rlef_jax import tokenizer as tok_lib

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    return tok_lib.convert_llama3_tiktoken(
        tok_lib.llama_models_tokenizer_file(), tmp_path_factory.mktemp("llama3_tok")
    )


@pytest.fixture(scope="module")
def chat(converted_dir):
    return tok_lib.ChatTokenizer.load(converted_dir)


@pytest.fixture(scope="module")
def meta_tokenizer():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer(tok_lib.llama_models_tokenizer_file())


def _random_text(rng: random.Random) -> str:
    pieces = [
        "def f(x):\n    return x + 1\n", "  ", "\n", "\n\n", "\t", "Hello", " world", "é", "日本語", "🙂",
        "```python\n", "```", "1234567", "'s", "'ll", " ", "x_BxL", "# comment", "\r\n", "!!", "?",
        "<|eot_id|>", "assert f(1) == 2", "  leading", "trailing  ",
    ]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def test_special_token_ids(chat):
    hf = chat.hf
    assert hf.convert_tokens_to_ids("<|begin_of_text|>") == 128000
    assert hf.convert_tokens_to_ids("<|start_header_id|>") == 128006
    assert hf.convert_tokens_to_ids("<|end_header_id|>") == 128007
    assert hf.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert (chat.bos_id, chat.eot_id, chat.pad_id) == (128000, 128009, 128004)
    assert chat.stop_ids == frozenset({128009, 128001})
    assert chat.vocab_size == 128256


def test_special_tokens_match_llama_models(chat, meta_tokenizer):
    vocab = chat.hf.get_vocab()
    for name, idx in meta_tokenizer.special_tokens.items():
        assert vocab[name] == idx, name


def test_two_turn_conversation_matches_apply_chat_template(chat):
    messages = [
        {"role": "user", "content": "Provide a Python solution for: add two numbers.\n"},
        {"role": "assistant", "content": "```python\nprint(sum(map(int, input().split())))\n```"},
        {"role": "user", "content": "  Your code failed the following tests:\n\n- input `1 2`\n"},
    ]
    for add_generation_prompt in (True, False):
        expected = chat.hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
        )
        assert chat.encode_dialog(messages, add_generation_prompt=add_generation_prompt) == list(expected)


def test_rendered_text_is_the_llama3_format(chat):
    ids = chat.encode_dialog([{"role": "user", "content": " hi \n"}])
    assert chat.hf.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat.decode(ids) == "user\n\nhiassistant\n\n"


def test_random_dialogs_are_token_in_token_out(chat):
    rng = random.Random(0)
    for _ in range(40):
        messages = [
            {"role": ("user", "assistant")[i % 2], "content": _random_text(rng)}
            for i in range(rng.randint(1, 5))
        ]
        pieces = [chat.bos_id]
        for m in messages:
            pieces += chat.encode_message(m["role"], m["content"])
        pieces += chat.assistant_header()
        dialog = chat.encode_dialog(messages)
        assert dialog == pieces
        assert dialog == list(chat.hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False))


def test_encode_matches_meta_tiktoken(chat, meta_tokenizer):
    rng = random.Random(1)
    texts = [_random_text(rng).replace("<|eot_id|>", "") for _ in range(50)]
    with gzip.open(SHARED / "humanevalplus" / "HumanEvalPlus.jsonl.gz", "rt") as f:
        texts += [json.loads(line)["prompt"] for line, _ in zip(f, range(40))]
    for text in texts:
        expected = meta_tokenizer.encode(text, bos=False, eos=False)
        assert chat.encode(text) == expected, text
        assert chat.decode(expected) == text


def test_load_adds_bos_like_meta_release(chat):
    assert chat.hf("x")["input_ids"] == [128000, 87]


def test_cached_dir_is_reused(tmp_path, monkeypatch, converted_dir):
    calls = []

    def fake_convert(model_file, out_dir):
        calls.append(model_file)
        shutil.copytree(converted_dir, out_dir, dirs_exist_ok=True)
        return out_dir

    monkeypatch.setattr(tok_lib, "convert_llama3_tiktoken", fake_convert)
    first = tok_lib.cached_llama3_tokenizer_dir(cache_dir=tmp_path)
    assert tok_lib.cached_llama3_tokenizer_dir(cache_dir=tmp_path) == first
    assert calls == [tok_lib.llama_models_tokenizer_file()]
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert tok_lib.ChatTokenizer.load(first).eot_id == 128009


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_llama3_tiktoken"):
        tok_lib.ChatTokenizer.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        tok_lib.convert_llama3_tiktoken(tmp_path / "missing.model", tmp_path / "out")


def test_non_llama_tokenizer_is_rejected():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="lacks the Llama 3 chat tokens"):
        tok_lib.ChatTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend))


def test_bad_messages_are_rejected(chat):
    with pytest.raises(ValueError, match="at least one message"):
        chat.encode_dialog([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        chat.encode_dialog([{"content": "x"}])
    with pytest.raises(TypeError, match="must be a str"):
        chat.encode_message("user", None)
