"""The synthetic family: its four properties, its tokenizer, and the reference solver in the real env."""
import json
import random
import string

import pytest

from rlef_jax import env, prompts, synthetic, synthetic_tokenizer
from rlef_jax.data import records as records_lib


@pytest.fixture(scope="module")
def tok(synthetic_tok):
    return synthetic_tok


@pytest.fixture(scope="module")
def pool(synthetic_pool):
    return synthetic_pool


@pytest.fixture(scope="module")
def records():
    return synthetic.generate_problems(400, seed=11)


def separator_of(record):
    return next(ch for ch in record["public_tests"]["output"][0] if not ch.islower())


def test_generation_is_deterministic_prefix_stable_and_valid(records):
    assert synthetic.generate_problems(400, seed=11) == records
    assert synthetic.generate_problems(7, seed=11) == records[:7]
    assert synthetic.generate_problems(7, seed=12) != records[:7]
    for i, record in enumerate(records):
        records_lib.validate_contest_record(record, where=f"problem {i}")
    assert len({r["name"] for r in records}) == len(records)
    with pytest.raises(ValueError, match="num_problems"):
        synthetic.generate_problems(-1, 0)


def test_expected_outputs_match_an_independent_oracle(records):
    orders = {"keep": lambda w: w, "reverse": lambda w: w[::-1], "sort": sorted,
              "sort_desc": lambda w: sorted(w)[::-1]}
    phrases = {"keep": "in the given order,", "reverse": "in reverse order,", "sort": "in alphabetical order,",
               "sort_desc": "in reverse alphabetical order,"}
    for record in records:
        (op,) = [o for o, phrase in phrases.items() if f"words {phrase}" in record["description"]]
        sep = separator_of(record)
        for field in records_lib.CONTEST_TEST_FIELDS:
            tests = record[field]
            for inp, out in zip(tests["input"], tests["output"]):
                assert out == sep.join(orders[op](inp.split())) + "\n"


def test_a_statement_leaves_the_separator_hidden(records):
    """(a): the statement depends on the operation only; every separator occurs with every statement."""
    by_statement = {}
    for record in records:
        by_statement.setdefault(record["description"], set()).add(separator_of(record))
    assert len(by_statement) == len(synthetic.OPERATIONS)
    assert all(seps == set(synthetic.SEPARATORS) for seps in by_statement.values())
    assert all(len(r["public_tests"]["input"]) in (1, 2) for r in records)


def test_d_private_tests_differ_from_public_ones(records):
    for record in records:
        public = set(record["public_tests"]["output"])
        for field in ("private_tests", "generated_tests"):
            assert not public & set(record[field]["output"])
            assert not set(record["public_tests"]["input"]) & set(record[field]["input"])
        words = [frozenset(i.split()) for f in records_lib.CONTEST_TEST_FIELDS for i in record[f]["input"]]
        assert len(set(words)) == len(words)


def test_solutions_pass_and_incorrect_solutions_fail_in_the_executor(records, pool):
    for record in records[:6]:
        problem = env.Problem.from_record("synthetic", record)
        every = problem.public_cases + problem.private_cases + problem.generated_cases
        assert pool.submit(problem.job(record["solutions"][0], every)).result().passed
        results = [pool.submit(problem.job(p, problem.public_cases)) for p in record["incorrect_solutions"]]
        assert not any(r.result().passed for r in results)
        assert len(record["incorrect_solutions"]) == len(synthetic.SEPARATORS) - 1 + len(synthetic.OPERATIONS) - 1


def test_b_reference_solver_solves_every_task_within_two_turns(records, tok, pool):
    def respond(state):
        text = synthetic.reference_response(state.problem.messages[0]["content"], [t.feedback for t in state.turns])
        return tok.encode(text) + [tok.eot_id]

    for record in records[:24]:
        problem = env.Problem.from_record("synthetic", record)
        episode = env.play_episode(problem, tok, respond, pool)
        assert episode.solved and len(episode.turns) == (1 if separator_of(record) == synthetic.SEPARATORS[0] else 2)


def test_blind_policy_wins_exactly_when_the_separator_is_among_its_first_three(records, tok, pool):
    def respond(state):
        return tok.encode(synthetic.blind_response(state.problem.messages[0]["content"], len(state.turns))) + [tok.eot_id]

    for record in records[24:40]:
        episode = env.play_episode(env.Problem.from_record("synthetic", record), tok, respond, pool)
        assert episode.solved == (separator_of(record) in synthetic.SEPARATORS[:3])


def test_c_random_feedback_shows_only_the_other_tasks_separator(records, pool):
    import numpy as np

    problems = [env.Problem.from_record("synthetic", r) for r in records[:30]]
    for i in range(6):
        rf = env.random_feedback_job(problems[i], problems, np.random.default_rng(i))
        text = env.random_feedback_text(rf, [pool.submit(j).result() for j in rf.jobs])
        other = records[[p.name for p in problems].index(rf.problem.name)]
        assert synthetic.separator_from_feedback(text) == separator_of(other)
        assert rf.problem.name != problems[i].name


def test_reference_solver_reads_only_statement_and_feedback():
    statement = prompts.CODE_CONTESTS_TEMPLATE.substitute(problem=synthetic.description("sort"))
    feedback = "Expected output `ant:bee:cat\n` but got `ant-bee-cat\n`"
    assert synthetic.reference_response(statement, [feedback]) == "```python\nprint(':'.join(sorted(input().split())))\n```"
    assert synthetic.reference_response(statement, [feedback, "Traceback ..."]).count("':'") == 1
    with pytest.raises(ValueError, match="Not a synthetic task statement"):
        synthetic.reference_response("Print a+b.")


def test_tokenizer_is_small_lossless_and_llama3_shaped(tok, records):
    assert tok.vocab_size <= synthetic_tokenizer.VOCAB_SIZE
    assert len({tok.bos_id, tok.eot_id, tok.pad_id}) == 3 and tok.stop_ids == {tok.eot_id,
                                                                              tok.hf.convert_tokens_to_ids("<|end_of_text|>")}
    rng = random.Random(0)
    texts = []
    for record in records[:50]:
        (message,), _ = prompts.initial_messages("synthetic", record)
        texts += [message["content"], *map(synthetic.response_text, record["solutions"] + record["incorrect_solutions"])]
        texts += record["public_tests"]["input"] + record["public_tests"]["output"]
        assert tok.encode_dialog([message]) == list(tok.hf.apply_chat_template(
            [message], add_generation_prompt=True, tokenize=True)["input_ids"])
    texts += ["".join(rng.choice(synthetic_tokenizer.ALPHABET) for _ in range(rng.randint(0, 60))) for _ in range(200)]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    for sep in synthetic.SEPARATORS:
        assert len(tok.encode(sep)) == 1
        assert tok.encode(f"ant{sep}cat") == tok.encode("ant") + tok.encode(sep) + tok.encode("cat")
        program = synthetic.solution_program("keep", sep)
        assert tok.encode(sep)[0] in tok.encode(program)
    assert all(len(tok.encode(w)) == 1 and len(tok.encode(" " + w)) == 1 for w in synthetic.WORDS)


def test_committed_tokenizer_is_what_the_script_builds(tmp_path):
    out = synthetic_tokenizer.build_tokenizer(tmp_path / "tok")
    built = json.loads((out / "tokenizer.json").read_text())
    committed = json.loads((synthetic_tokenizer.DEFAULT_DIR / "tokenizer.json").read_text())
    assert built == committed


def test_response_lengths_fit_a_tiny_model(tok, records):
    lengths = [len(tok.encode(synthetic.response_text(r["solutions"][0]))) + 1 for r in records]
    assert 10 <= min(lengths) and max(lengths) <= 25


def test_alphabet_is_printable_ascii():
    assert set(synthetic_tokenizer.ALPHABET) == set(string.printable) - set("\x0b\x0c\r")
