"""The small tokenizer of the synthetic task family, and the command that regenerates it.

    python -m rlef_jax.synthetic_tokenizer [--out rlef_jax/assets/synthetic_tokenizer]

A character-level BPE (HF `tokenizers`) over printable ASCII, trained on texts of the family: the real
CodeContests prompt (rlef_jax.prompts), responses, the real feedback messages
(rlef_jax.execution.feedback) and the environment's own messages. Vocabulary `VOCAB_SIZE` = 512
including the Llama 3 chat special tokens, so a tiny model's embedding stays small.

Pre-tokenisation splits every punctuation character into its own piece (runs of brackets excepted), so
each separator of the family is one token wherever it appears ("ant-cat" and `'-'.join`), while words
(with an optional leading space), digit runs, bracket runs and "```" may merge. Decoding concatenates
the pieces (`Fuse`), so decode(encode(x)) == x for every text over the alphabet; a character outside it
becomes `<|unk|>`. The directory loads with `ChatTokenizer.load` (Llama 3 chat template, pad token
`<|finetune_right_pad_id|>`).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import string

VOCAB_SIZE = 512
DEFAULT_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "synthetic_tokenizer"
UNK = "<|unk|>"
CORPUS_SEED = 12345
CORPUS_PROBLEMS = 2000
# Texts the family's episodes also contain: chat roles and the tracebacks of common mistakes (the
# executor's format, rlef_jax/execution/_runner.py), so that they tokenise compactly.
EXTRA_TEXTS = (
    "user", "assistant",
    'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\n    raise NotImplementedError()\n'
    "NotImplementedError",
    'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\n    print(x)\n           ^\n'
    "NameError: name 'x' is not defined",
)
ALPHABET = sorted(set(string.printable) - set("\x0b\x0c\r"))
PRE_TOKEN_PATTERN = r"```|[ ]?[A-Za-z_]+|[ ]?[0-9]+|[()\[\]{}]+|[^\sA-Za-z0-9_()\[\]{}]|\n+|[ \t]+|\s"


def special_tokens() -> list[str]:
    """The special tokens, in id order: the Llama 3 chat tokens, the pad token and `<|unk|>`."""
    from rlef_jax import tokenizer as tok_lib

    return [
        tok_lib.BEGIN_OF_TEXT, tok_lib.END_OF_TEXT, tok_lib.START_HEADER, tok_lib.END_HEADER, tok_lib.EOT,
        tok_lib.FINETUNE_PAD, UNK,
    ]


def corpus(num_problems: int = CORPUS_PROBLEMS, seed: int = CORPUS_SEED) -> list[str]:
    """Training texts: every message text an episode of the family can contain."""
    from rlef_jax import extract, prompts, synthetic
    from rlef_jax.execution import feedback
    from rlef_jax.execution.types import CaseResult, IOCase, Verdict

    texts = list(EXTRA_TEXTS) * 20
    for record in synthetic.generate_problems(num_problems, seed):
        (message,), _ = prompts.initial_messages("synthetic", record)
        texts.append(message["content"])
        programs = record["solutions"] + record["incorrect_solutions"]
        texts += [synthetic.response_text(p) for p in programs]
        cases = [IOCase(i, o) for i, o in zip(record["public_tests"]["input"], record["public_tests"]["output"])]
        texts.append(feedback.codecontests_feedback(cases, [CaseResult(Verdict.NO_CODE) for _ in cases]))
        broken = record["solutions"][0][:-1]
        texts.append(feedback.codecontests_feedback(
            cases, [CaseResult(Verdict.SYNTAX_ERROR, error=extract.syntax_error(broken)) for _ in cases]))
        for program in record["incorrect_solutions"][:3]:
            results = [
                CaseResult(Verdict.WRONG_ANSWER, expected=c.output, actual=_run_one_liner(program, c.input))
                for c in cases
            ]
            texts.append(feedback.codecontests_feedback(cases, results))
    return texts


def _run_one_liner(program: str, line: str) -> str:
    """The output of a family program on one input line, computed without executing it."""
    from rlef_jax import synthetic

    for operation in synthetic.OPERATIONS:
        for separator in synthetic.SEPARATORS:
            if synthetic.solution_program(operation, separator) == program:
                return separator.join(synthetic.apply_operation(operation, line.split())) + "\n"
    raise ValueError(f"Not a program of the synthetic family: {program!r}.")


def build_tokenizer(out_dir=DEFAULT_DIR, texts=None) -> pathlib.Path:
    """Trains the tokenizer on `texts` (default: `corpus()`) and saves a transformers directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from rlef_jax import tokenizer as tok_lib

    specials = special_tokens()
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(PRE_TOKEN_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=ALPHABET,
        limit_alphabet=len(ALPHABET), min_frequency=2, show_progress=False,
    )
    backend.train_from_iterator(texts if texts is not None else corpus(), trainer=trainer)
    bos_id = backend.token_to_id(tok_lib.BEGIN_OF_TEXT)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{tok_lib.BEGIN_OF_TEXT} $A", pair=f"{tok_lib.BEGIN_OF_TEXT} $A {tok_lib.BEGIN_OF_TEXT} $B",
        special_tokens=[(tok_lib.BEGIN_OF_TEXT, bos_id)],
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok_lib.BEGIN_OF_TEXT, eos_token=tok_lib.EOT,
        pad_token=tok_lib.FINETUNE_PAD, unk_token=UNK, chat_template=tok_lib.LLAMA3_CHAT_TEMPLATE,
        model_max_length=4096, model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    # Stop on <|eot_id|> and <|end_of_text|>, as Llama 3 Instruct's generation config does.
    stops = [backend.token_to_id(tok_lib.EOT), backend.token_to_id(tok_lib.END_OF_TEXT)]
    (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}) + "\n")
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_DIR, help="output directory")
    args = parser.parse_args(argv)
    print(f"wrote {build_tokenizer(args.out)}")


if __name__ == "__main__":
    main()
