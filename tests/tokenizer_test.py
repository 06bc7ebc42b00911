"""ChatTokenizer against transformers' apply_chat_template, for each chat template rlef_jax must follow,
and the Llama 3 tokenizer against Meta's own tiktoken tokenizer.

Templates: Llama 3.0 Instruct (`tokenizer.LLAMA3_CHAT_TEMPLATE`), Llama 3.1 and 3.2 Instruct
(tests/fixtures/chat_templates), each on the Llama 3 tokenizer converted from the `llama-models` wheel
(never committed: Llama licence), and ChatML with SmolLM2-135M-Instruct's own tokenizer and template.
"""
import gzip
import json
import pathlib
import random
import shutil

import pytest

from rlef_jax import tokenizer as tok_lib
from rlef_jax.data import assets

TEMPLATES = pathlib.Path(__file__).parent / "fixtures" / "chat_templates"
LLAMA_TEMPLATES = {
    "llama3.0": tok_lib.LLAMA3_CHAT_TEMPLATE,
    "llama3.1": (TEMPLATES / "llama3.1-instruct.jinja").read_text(),
    "llama3.2": (TEMPLATES / "llama3.2-instruct.jinja").read_text(),
}
DATE = {"date_string": "26 Jul 2024"}

RESPONSES = [
    "```python\nn = int(input())\nprint(n + 1)\n```",
    "Here is a solution:\n\n```python\ndef f(xs):\n    return sorted(xs)[::-1]\n```\n\nIt sorts in reverse.",
    "I think the bug is the separator.\n```python\nprint('-'.join(input().split()))\n```",
]
FEEDBACKS = [
    "Your code failed the following tests:\n\n- input `3\n1 2 3\n` failed:\nExpected output `6\n` but got "
    "`5 `\n\nGive it another try.\nYour code should be enclosed in triple backticks like so: ```python YOUR "
    "CODE HERE ```. Use the backticks for your code only.",
    "Your code failed some test cases:\n\n- Failure: `assertEqual(f([1, 2]), [2, 1])`:\n`AssertionError: "
    "Lists differ: [1, 2] != [2, 1]`\n- Success: `assertEqual(f([]), [])`\n\nGive it another try.",
]
USER = ("Provide a Python solution for the following competitive programming question: Print n + 1 for "
        "an integer n.\n\nYour code should be enclosed in triple backticks like so: ```python YOUR CODE "
        "HERE ```. Use the backticks for your code only.")


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    return tok_lib.convert_llama3_tiktoken(
        tok_lib.llama_models_tokenizer_file(), tmp_path_factory.mktemp("llama3_tok")
    )


@pytest.fixture(scope="module")
def chat(converted_dir):
    return tok_lib.ChatTokenizer.load(converted_dir)


@pytest.fixture(scope="module")
def template_dirs(converted_dir, smollm2_tokenizer_dir, tmp_path_factory):
    """One tokenizer directory per template: the Llama 3 tokenizer with each Llama template, and
    SmolLM2's own (ChatML)."""
    dirs = {}
    for name, template in LLAMA_TEMPLATES.items():
        d = tmp_path_factory.mktemp(name)
        shutil.copytree(converted_dir, d, dirs_exist_ok=True)
        config = json.loads((d / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (d / "tokenizer_config.json").write_text(json.dumps(config))
        (d / "chat_template.jinja").write_text(template)
        dirs[name] = d
    dirs["chatml"] = smollm2_tokenizer_dir
    return dirs


@pytest.fixture(scope="module")
def chats(template_dirs):
    return {name: tok_lib.ChatTokenizer.load(d, template_kwargs=DATE) for name, d in template_dirs.items()}


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


def _turn_by_turn(chat, messages, responses, feedbacks):
    """Tokens built as an episode builds them: prompt, each response's ids + end-of-turn, each
    feedback's follow-up ids; and the messages of the whole dialogue."""
    history = list(messages)
    ids = chat.encode_dialog(history)
    for i, response in enumerate(responses):
        ids += chat.encode(response) + [chat.end_of_turn_id]
        history.append({"role": "assistant", "content": response})
        if i < len(feedbacks):
            ids += chat.followup_ids(history, "user", feedbacks[i])
            history.append({"role": "user", "content": feedbacks[i]})
    return ids, history


# --- the Llama 3 tokenizer itself --------------------------------------------------------------


def test_special_token_ids(chat):
    hf = chat.hf
    assert hf.convert_tokens_to_ids("<|begin_of_text|>") == 128000
    assert hf.convert_tokens_to_ids("<|start_header_id|>") == 128006
    assert hf.convert_tokens_to_ids("<|end_header_id|>") == 128007
    assert hf.convert_tokens_to_ids("<|eot_id|>") == 128009
    assert (chat.end_of_turn_id, chat.eot_id, chat.pad_id) == (128009, 128009, 128004)
    # <|end_of_text|>, <|eom_id|>, <|eot_id|>: the generation config of Meta's 3.1 release.
    assert chat.stop_ids == frozenset({128001, 128008, 128009})
    assert chat.vocab_size == 128256


def test_special_tokens_match_llama_models(chat, meta_tokenizer):
    vocab = chat.hf.get_vocab()
    for name, idx in meta_tokenizer.special_tokens.items():
        assert vocab[name] == idx, name


def test_encode_matches_meta_tiktoken(chat, meta_tokenizer):
    rng = random.Random(1)
    texts = [_random_text(rng).replace("<|eot_id|>", "") for _ in range(50)]
    with gzip.open(assets.benchmark_file(assets.HUMANEVAL_PLUS), "rt") as f:
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


# --- chat templates: rendering, stop ids, token-in/token-out -----------------------------------


@pytest.mark.parametrize("name", ["llama3.0", "llama3.1", "llama3.2", "chatml"])
@pytest.mark.parametrize("system", [None, "You are a careful competitive programmer."])
def test_encode_dialog_is_apply_chat_template(chats, name, system):
    chat = chats[name]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": USER}, {"role": "assistant", "content": RESPONSES[0]},
        {"role": "user", "content": FEEDBACKS[0]}]
    for add_generation_prompt in (True, False):
        expected = chat.hf.apply_chat_template(messages, tokenize=True, return_dict=False,
                                               add_generation_prompt=add_generation_prompt, **DATE)
        assert chat.encode_dialog(messages, add_generation_prompt=add_generation_prompt) == list(expected)


@pytest.mark.parametrize("name", ["llama3.0", "llama3.1", "llama3.2", "chatml"])
@pytest.mark.parametrize("system", [None, "You are a careful competitive programmer."])
def test_turn_by_turn_tokens_equal_the_whole_dialogue(chats, name, system):
    """Prompt, sampled response, feedback message, next generation prompt, ... built piece by piece
    equal the template's rendering of the whole dialogue, tokenised at once."""
    chat = chats[name]
    first = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": USER}]
    for responses in (RESPONSES[:1], RESPONSES[:2], RESPONSES):
        feedbacks = [FEEDBACKS[i % 2] for i in range(len(responses))]
        ids, history = _turn_by_turn(chat, first, responses, feedbacks)
        # The last response is followed by feedback and a new generation prompt.
        assert ids == chat.encode_dialog(history, add_generation_prompt=True)
        # Ending on a response: the episode stops at its end-of-turn token; what the template renders
        # after that token (ChatML's "\n") is not part of it.
        ids, history = _turn_by_turn(chat, first, responses, feedbacks[:len(responses) - 1])
        assert ids + chat.encode(chat.after_turn_end) == chat.encode_dialog(history, add_generation_prompt=False)


@pytest.mark.parametrize("name", ["llama3.0", "llama3.1", "chatml"])
def test_random_dialogues_are_token_in_token_out(chats, name):
    chat = chats[name]
    rng = random.Random(0)
    for _ in range(15):
        texts = []
        while len(texts) < rng.randint(1, 5):
            text = _random_text(rng).replace("<|eot_id|>", "").strip()
            if text:  # Llama templates trim messages: a sampled response is its stripped text
                texts.append(text)
        responses, feedbacks = texts[::2], texts[1::2]
        ids, history = _turn_by_turn(chat, [{"role": "user", "content": USER}], responses, feedbacks)
        if len(feedbacks) == len(responses):
            assert ids == chat.encode_dialog(history)
        else:
            assert ids + chat.encode(chat.after_turn_end) == chat.encode_dialog(history, add_generation_prompt=False)


def test_what_each_template_renders_without_a_system_message(chats):
    user = [{"role": "user", "content": "hi"}]
    assert chats["llama3.0"].render(user) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    llama31 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
               "December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
               "\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert chats["llama3.1"].render(user) == llama31
    assert chats["llama3.2"].render(user) == llama31
    assert chats["chatml"].render(user) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_date_string_pins_llama32_prompts(template_dirs):
    today = tok_lib.ChatTokenizer.load(template_dirs["llama3.2"])  # no date_string: strftime_now
    pinned = tok_lib.ChatTokenizer.load(template_dirs["llama3.2"], template_kwargs={"date_string": "1 Jan 2030"})
    user = [{"role": "user", "content": "hi"}]
    assert "Today Date: 1 Jan 2030\n" in pinned.render(user)
    assert "Today Date: 26 Jul 2024" not in today.render(user)  # the calendar date instead


def test_stop_ids_come_from_the_template_and_generation_config(chats, template_dirs):
    chatml = chats["chatml"]
    im_end = chatml.hf.convert_tokens_to_ids("<|im_end|>")
    assert chatml.end_of_turn_id == im_end and chatml.end_of_turn_text == "<|im_end|>"
    assert chatml.after_turn_end == "\n"
    assert im_end in chatml.stop_ids and chatml.hf.eos_token_id in chatml.stop_ids
    for name in ("llama3.0", "llama3.1", "llama3.2"):
        assert chats[name].end_of_turn_text == "<|eot_id|>" and chats[name].after_turn_end == ""
        assert chats[name].stop_ids == frozenset({128001, 128008, 128009})
    # Without generation_config.json only the template's end of turn and the eos token stop.
    (template_dirs["llama3.0"] / "generation_config.json").rename(template_dirs["llama3.0"] / "gc.json")
    try:
        assert tok_lib.ChatTokenizer.load(template_dirs["llama3.0"]).stop_ids == frozenset({128009})
    finally:
        (template_dirs["llama3.0"] / "gc.json").rename(template_dirs["llama3.0"] / "generation_config.json")


def test_followup_after_chatml_turn_starts_with_the_newline(chats):
    chat = chats["chatml"]
    history = [{"role": "user", "content": USER}, {"role": "assistant", "content": RESPONSES[0]}]
    ids = chat.followup_ids(history, "user", "Give it another try.")
    assert chat.hf.convert_ids_to_tokens(ids)[:2] == ["Ċ", "<|im_start|>"]
    assert chat.hf.decode(ids).endswith("<|im_start|>assistant\n")


# --- errors ------------------------------------------------------------------------------------


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.tokenizer.path"):
        tok_lib.ChatTokenizer.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        tok_lib.convert_llama3_tiktoken(tmp_path / "missing.model", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not be loaded"):
        tok_lib.ChatTokenizer.load(tmp_path / "empty")


def _word_level(template=None, specials=()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"a": 0, "[UNK]": 1, **{s: 2 + i for i, s in enumerate(specials)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", chat_template=template)
    if specials:
        hf.add_special_tokens({"additional_special_tokens": list(specials)})
    return hf


def test_unusable_templates_are_rejected(tmp_path, converted_dir):
    with pytest.raises(ValueError, match="no chat_template"):
        tok_lib.ChatTokenizer(_word_level())
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="special token"):
        tok_lib.ChatTokenizer(_word_level(plain))
    # A template that renders the last assistant message differently from earlier ones.
    last_differs = ("{% for m in messages %}{{ m['role'] }}{% if loop.last and m['role'] == 'assistant' %}"
                    "{{ m['content'] }}<end>{% else %}{{ m['content'] | upper }}<end>{% endif %}{% endfor %}"
                    "{% if add_generation_prompt %}assistant{% endif %}")
    chat = tok_lib.ChatTokenizer(_word_level(last_differs, specials=("<end>",)))
    with pytest.raises(ValueError, match="append-only"):
        chat.followup_ids([{"role": "user", "content": "a"}, {"role": "assistant", "content": "a"}], "user", "a")
    (tmp_path / "gc").mkdir()
    (tmp_path / "gc" / "generation_config.json").write_text('{"eos_token_id": "x"}')
    with pytest.raises(ValueError, match="eos_token_id"):
        tok_lib.generation_stop_ids(tmp_path / "gc")


def test_bad_messages_are_rejected(chat):
    with pytest.raises(ValueError, match="at least one message"):
        chat.encode_dialog([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        chat.encode_dialog([{"content": "x"}])
    with pytest.raises(TypeError, match="must be a str"):
        chat.encode_dialog([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="ends with the assistant"):
        chat.followup_ids([{"role": "user", "content": "x"}], "user", "y")
