"""The episode state machine driven by scripted policies, with the real executor and real tokenizer.

Expected feedback messages are written out here from the paper's templates (App. C.1), not produced by
the feedback module, so the test checks the environment's whole path to the message.
"""
import random

import numpy as np
import pytest

from rlef_jax import env, synthetic
from rlef_jax.execution import Verdict
from conftest import generation_prompt_ids, user_turn_ids

BACKTICKS = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
             "Use the backticks for your code only.")
RETRY = "Give it another try.\n" + BACKTICKS


@pytest.fixture(scope="module")
def tok(synthetic_tok):
    return synthetic_tok


@pytest.fixture(scope="module")
def pool(synthetic_pool):
    return synthetic_pool


@pytest.fixture(scope="module")
def records():
    return synthetic.generate_problems(40, seed=3)


@pytest.fixture(scope="module")
def problems(records):
    return [env.Problem.from_record("synthetic", r) for r in records]


def two_public(records, problems):
    return next((r, p) for r, p in zip(records, problems) if len(p.public_cases) == 2)


def scripted(tok, texts, eot=True):
    """A policy answering the i-th turn with texts[i] (None: a response cut before `<|eot_id|>`)."""
    def respond(state):
        return [*tok.encode(texts[len(state.turns)]), *([tok.eot_id] if eot else [])]
    return respond


def wrong_answer_feedback(cases, actuals):
    body = "".join(f"- input `{c.input}` failed:\nExpected output `{c.output}` but got `{a}`\n"
                   for c, a in zip(cases, actuals))
    return "Your code failed the following tests:\n\n" + body + "\n" + RETRY


def test_canonical_solution_ends_after_one_turn(tok, pool, records, problems):
    record, problem = two_public(records, problems)
    text = synthetic.response_text(record["solutions"][0])
    episode = env.play_episode(problem, tok, scripted(tok, [text]), pool)
    prompt = tok.encode_dialog([{"role": "user", "content": problem.messages[0]["content"]}])
    response = tok.encode(text) + [tok.eot_id]
    assert episode.tokens == tuple(prompt + response)
    assert episode.policy_mask == (0,) * len(prompt) + (1,) * len(response)
    (turn,) = episode.turns
    assert (turn.prompt_end, turn.response_end) == (len(prompt), len(prompt) + len(response))
    assert turn.code == record["solutions"][0] + "\n" and turn.valid and turn.feedback is None
    assert turn.public_result.passed and episode.solved and episode.task_rewards == (1.0,)
    assert len(episode.final_result.cases) == 2 + synthetic.NUM_PRIVATE + synthetic.NUM_GENERATED


def test_wrong_then_right(tok, pool, records, problems):
    record, problem = two_public(records, problems)
    wrong, right = record["incorrect_solutions"][0], record["solutions"][0]
    texts = [synthetic.response_text(wrong), synthetic.response_text(right)]
    episode = env.play_episode(problem, tok, scripted(tok, texts), pool)
    wrong_sep = wrong.split("'")[1]
    right_sep = right.split("'")[1]
    actuals = [c.output.replace(right_sep, wrong_sep) for c in problem.public_cases]
    feedback = wrong_answer_feedback(problem.public_cases, actuals)
    assert [t.feedback for t in episode.turns] == [feedback, None]
    expected = (tok.encode_dialog(list(problem.messages)) + tok.encode(texts[0]) + [tok.eot_id]
                + user_turn_ids(tok, feedback) + tok.encode(texts[1]) + [tok.eot_id])
    # The whole dialogue rendered by the template at once gives the same tokens (token-in/token-out).
    whole = [*problem.messages, {"role": "assistant", "content": texts[0]}, {"role": "user", "content": feedback},
             {"role": "assistant", "content": texts[1]}]
    assert tok.encode_dialog(whole, add_generation_prompt=False) == expected
    assert episode.tokens == tuple(expected)
    assert sum(episode.policy_mask) == len(tok.encode(texts[0])) + len(tok.encode(texts[1])) + 2
    second = episode.turns[1]
    assert episode.tokens[second.prompt_end - 1] == generation_prompt_ids(tok)[-1]
    assert list(episode.tokens[second.prompt_end:second.response_end]) == tok.encode(texts[1]) + [tok.eot_id]
    assert episode.task_rewards == (0.0, 1.0) and episode.solved


@pytest.mark.parametrize("stacks,final", [(False, -1.0), (True, -1.2)])
def test_never_emitting_code(tok, pool, problems, stacks, final):
    problem = problems[0]
    texts = ["I do not know."] * 3
    config = {"final_turn_invalid_penalty_stacks": stacks}
    episode = env.play_episode(problem, tok, scripted(tok, texts), pool, config)
    no_code = "".join(f"- input `{c.input}` failed:\nNo Python code was found in the response.\n"
                      for c in problem.public_cases)
    message = "Your code failed the following tests:\n\n" + no_code + "\n" + RETRY
    assert [t.feedback for t in episode.turns] == [message, message, None]
    assert [t.valid for t in episode.turns] == [False] * 3 and all(t.public_result is None for t in episode.turns)
    assert episode.task_rewards == pytest.approx((-0.2, -0.2, final))
    assert not episode.solved and episode.final_result is None


def test_hard_coded_public_outputs_pass_public_and_fail_private(tok, pool, records, problems):
    record, problem = two_public(records, problems)
    table = dict(zip(record["public_tests"]["input"], record["public_tests"]["output"]))
    program = f"import sys\nprint({table!r}[sys.stdin.read()], end='')"
    episode = env.play_episode(problem, tok, scripted(tok, [synthetic.response_text(program)]), pool)
    (turn,) = episode.turns
    assert turn.public_result.passed and turn.feedback is None
    assert episode.task_rewards == (-1.0,) and not episode.solved
    scored = episode.final_result.cases
    assert [r.verdict for r in scored[:2]] == [Verdict.PASSED] * 2
    assert all(r.verdict == Verdict.RUNTIME_ERROR for r in scored[2:])


def test_truncated_response_gets_a_non_policy_eot(tok, pool, problems):
    problem = problems[1]
    state = env.start(problem, tok)
    ids = tok.encode("```python\nprint(1")
    state, job = env.on_response(state, ids)
    turn = state.turns[0]
    assert job is None and turn.truncated and not turn.valid and turn.code is None
    assert state.tokens[-1] == tok.eot_id and state.policy_mask[-len(ids) - 1:] == (1,) * len(ids) + (0,)
    assert turn.response_end == len(state.tokens) == turn.prompt_end + len(ids) + 1


def test_syntax_error_feedback_equals_the_executors(tok, pool, problems):
    problem = problems[2]
    text = "```python\nprint('-'.join(input().split())\n```"
    state, job = env.on_response(env.start(problem, tok), tok.encode(text) + [tok.eot_id])
    assert job is None
    state = env.on_public_result(state, None)
    ran = pool.submit(problem.job(state.turns[0].code, problem.public_cases)).result()
    assert ran.program_verdict == Verdict.SYNTAX_ERROR
    executor_text = problem.render_feedback(problem.public_cases, ran.cases, state.config.truncation())
    assert state.turns[0].feedback == executor_text and "SyntaxError" in executor_text


def test_no_feedback_variant_never_stops_early(tok, pool, records, problems):
    text = synthetic.response_text(records[0]["solutions"][0])
    episode = env.play_episode(problems[0], tok, scripted(tok, [text] * 3), pool, {"feedback": "none"})
    assert [t.feedback for t in episode.turns] == [RETRY, RETRY, None]
    assert all(t.public_result.passed for t in episode.turns)
    assert episode.task_rewards == (0.0, 0.0, 1.0)


def test_rich_feedback_runs_private_tests_and_caps_failures(tok, pool, records, problems):
    record, problem = two_public(records, problems)
    wrong = synthetic.response_text(record["incorrect_solutions"][0])
    config = {"feedback": "rich", "rich_num_tests": 10, "rich_max_failures": 3}
    state, job = env.on_response(env.start(problem, tok, config), tok.encode(wrong) + [tok.eot_id])
    assert job.cases == (problem.public_cases + problem.private_cases + problem.generated_cases)[:10]
    state = env.on_public_result(state, pool.submit(job).result())
    text = state.turns[0].feedback
    assert text.count("- input `") == 3 and "- (7 more failing tests not shown)\n" in text


def test_random_feedback_comes_from_another_problem(tok, pool, records, problems):
    problem = problems[0]
    rf = env.random_feedback_job(problem, problems, np.random.default_rng(0))
    assert rf.problem.name != problem.name and len(rf.jobs) == 5
    assert rf.jobs[-1].program == "raise NotImplementedError()"
    assert {j.program for j in rf.jobs[:-1]} <= set(rf.problem.incorrect_solutions)
    text = env.random_feedback_text(rf, [pool.submit(j).result() for j in rf.jobs])
    other_separator = next(ch for ch in rf.problem.public_cases[0].output if not ch.islower())
    assert synthetic.separator_from_feedback(text) == other_separator
    assert all(c.input not in text for c in problem.public_cases)
    right = synthetic.response_text(records[0]["solutions"][0])
    config = {"feedback": "random"}
    state, job = env.on_response(env.start(problem, tok, config), tok.encode(right) + [tok.eot_id])
    result = pool.submit(job).result()
    assert not env.feedback_needed(state, result)
    assert env.on_public_result(state, result).done
    wrong = synthetic.response_text(records[0]["incorrect_solutions"][0])
    state, job = env.on_response(env.start(problem, tok, config), tok.encode(wrong) + [tok.eot_id])
    with pytest.raises(ValueError, match="random_feedback_text"):
        env.on_public_result(state, pool.submit(job).result())
    state = env.on_public_result(state, pool.submit(job).result(), random_feedback_text=text)
    assert state.turns[0].feedback == text


def test_random_feedback_falls_back_to_not_implemented_error(tok, pool, records):
    passing = dict(records[1], incorrect_solutions=records[1]["solutions"])
    pool_of_problems = [env.Problem.from_record("synthetic", r) for r in (records[0], passing)]
    rf = env.random_feedback_job(pool_of_problems[0], pool_of_problems, np.random.default_rng(1))
    assert [j.program for j in rf.jobs] == [records[1]["solutions"][0], "raise NotImplementedError()"]
    text = env.random_feedback_text(rf, [pool.submit(j).result() for j in rf.jobs])
    assert "NotImplementedError" in text and "Expected output" not in text


def test_random_feedback_in_a_pool_without_incorrect_solutions(pool, records):
    """EvalPlus-like pools ship no incorrect solutions: another problem's public tests, the fallback's
    traceback. A pool where some problem has them keeps drawing only those (App. C.2)."""
    bare = [env.Problem.from_record("synthetic", dict(r, incorrect_solutions=[])) for r in records[:4]]
    rf = env.random_feedback_job(bare[0], bare, np.random.default_rng(2))
    assert rf.problem.name != bare[0].name and [j.program for j in rf.jobs] == ["raise NotImplementedError()"]
    text = env.random_feedback_text(rf, [pool.submit(j).result() for j in rf.jobs])
    assert "NotImplementedError" in text
    mixed = bare[:3] + [env.Problem.from_record("synthetic", records[4])]
    for seed in range(5):
        assert env.random_feedback_job(mixed[0], mixed, np.random.default_rng(seed)).problem.name == mixed[3].name
    with pytest.raises(ValueError, match="has incorrect solutions"):
        env.random_feedback_job(mixed[3], mixed, np.random.default_rng(0))


def test_out_of_order_calls_and_bad_inputs(tok, problems):
    state = env.start(problems[0], tok)
    with pytest.raises(ValueError, match="awaits 'response'"):
        env.on_public_result(state, None)
    with pytest.raises(ValueError, match="stop token before its end"):
        env.on_response(state, [tok.eot_id, 5])
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        env.on_response(state, [tok.vocab_size])
    state, _ = env.on_response(state, tok.encode("nothing"))
    with pytest.raises(ValueError, match="without valid code"):
        env.on_public_result(state, env.JobResult(None, []))
    with pytest.raises(ValueError, match="Unknown config.env fields"):
        env.start(problems[0], tok, {"max_turn": 3})
    with pytest.raises(ValueError, match="config.env.feedback must be one of"):
        env.start(problems[0], tok, {"feedback": "false"})
    with pytest.raises(ValueError, match="Unknown problem source"):
        env.Problem.from_record("codecontests", {})


def test_generated_tests_switch(tok, records, problems):
    text = synthetic.response_text(records[0]["solutions"][0])
    for use, extra in [(True, synthetic.NUM_GENERATED), (False, 0)]:
        state, job = env.on_response(env.start(problems[0], tok, {"use_generated_tests_for_reward": use}),
                                     tok.encode(text) + [tok.eot_id])
        state = env.on_public_result(state, env.JobResult(None, [env.CaseResult(Verdict.PASSED)] * len(job.cases)))
        final = env.final_job(state)
        assert len(final.cases) == len(problems[0].public_cases) + synthetic.NUM_PRIVATE + extra


def test_random_scripted_policies_keep_the_invariants(tok, pool, records, problems):
    """Property: for random mixes of responses the episode obeys the paper's termination and rewards."""
    rng = random.Random(0)
    for i in range(12):
        record, problem = records[i], problems[i]
        options = [synthetic.response_text(record["solutions"][0]), "no code here",
                   synthetic.response_text(rng.choice(record["incorrect_solutions"])), "```python\nprint(1"]
        texts = [rng.choice(options) for _ in range(3)]
        max_turns = rng.choice([1, 2, 3])
        episode = env.play_episode(problem, tok, scripted(tok, texts, eot=rng.random() < 0.7), pool,
                                   {"max_turns": max_turns})
        solved_at = [j for j, t in enumerate(texts) if t == options[0]]
        n = min(solved_at[0] + 1, max_turns) if solved_at else max_turns
        assert len(episode.turns) == n and len(episode.tokens) == len(episode.policy_mask)
        valid = [texts[j] in (options[0], options[2]) for j in range(n)]
        assert [t.valid for t in episode.turns] == valid
        assert episode.solved == (texts[n - 1] == options[0])
        expected = [0.0 if v else -0.2 for v in valid[:-1]] + [1.0 if episode.solved else -1.0]
        assert episode.task_rewards == pytest.approx(tuple(expected))
        for t in episode.turns:
            assert episode.tokens[t.prompt_end:t.prompt_end + len(t.response_ids)] == t.response_ids
            assert sum(episode.policy_mask[t.prompt_end:t.response_end]) == len(t.response_ids)
        assert sum(episode.policy_mask) == sum(len(t.response_ids) for t in episode.turns)


def test_codecontests_record_limits_and_cases():
    import json
    import pathlib

    record = json.loads((pathlib.Path(__file__).parent / "fixtures/stdio_problems/sum_two.json").read_text())
    problem = env.Problem.from_record("code_contests", dict(record, time_limit={"seconds": 3, "nanos": 500_000_000},
                                                            memory_limit_bytes=32 << 20))
    assert (problem.limits.time_s, problem.limits.memory_bytes) == (3.5, 64 << 20)
    assert [c.input for c in problem.private_cases] == record["private_tests"]["input"]
    assert len(problem.generated_cases) == 3 and problem.entry_point is None
    default = env.Problem.from_record("code_contests", record)
    assert (default.limits.time_s, default.limits.memory_bytes) == (10.0, 1 << 30)
    with pytest.raises(ValueError, match="public and 0 private tests"):
        env.Problem.from_record("code_contests", dict(record, private_tests={"input": [], "output": []}))


def test_humaneval_plus_episode_with_prefill(tok, pool, tmp_path):
    import gzip
    import json

    from rlef_jax.data import assets
    from rlef_jax.execution import evalplus

    path = assets.benchmark_file(assets.HUMANEVAL_PLUS_MINI)  # shipped: rlef_jax/assets/benchmarks
    with gzip.open(path, "rt") as f:
        task = json.loads(f.readline())
    prepared = evalplus.prepare_task(task)
    expected = {w: evalplus.compute_expected([prepared], pool, w, cache_dir=str(tmp_path))[task["task_id"]]
                for w in ("base", "plus")}
    problem = env.Problem.from_record("humaneval_plus", task, expected_outputs=expected)
    assert problem.prefill == task["prompt"] and problem.entry_point == task["entry_point"]
    broken = "    return None\n```"
    episode = env.play_episode(problem, tok, scripted(tok, [broken, task["canonical_solution"] + "```"]), pool)
    first, second = episode.turns
    assert first.feedback.startswith("Your code failed some test cases:\n\n- Failure: `assert")
    assert first.feedback.endswith("\n\nGive it another try.")
    prefill_ids = tok.encode(task["prompt"])
    assert episode.tokens[second.prompt_end - len(prefill_ids):second.prompt_end] == tuple(prefill_ids)
    assert second.code == task["prompt"] + task["canonical_solution"]
    assert episode.solved and episode.task_rewards == (0.0, 1.0)
    with pytest.raises(ValueError, match="expected_outputs"):
        env.Problem.from_record("humaneval_plus", task)


def test_project_config_env_is_accepted_with_the_same_defaults():
    from rlef_jax import config as config_lib

    project = config_lib.base_config().env.to_dict()
    defaults = env.default_env_config().to_dict()
    assert set(project) <= set(defaults)
    assert {k: defaults[k] for k in project} == project
    assert env.EnvConfig.from_config(config_lib.base_config().env) == env.EnvConfig.from_config(None)


def test_max_failures_shown_caps_the_true_feedback(tok, pool, records, problems):
    record, problem = two_public(records, problems)
    wrong = synthetic.response_text(record["incorrect_solutions"][0])
    state, job = env.on_response(env.start(problem, tok, {"max_failures_shown": 1}), tok.encode(wrong) + [tok.eot_id])
    text = env.on_public_result(state, pool.submit(job).result()).turns[0].feedback
    assert text.count("- input `") == 1 and "- (1 more failing test not shown)\n" in text
