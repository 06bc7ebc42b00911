"""The multi-turn RLEF environment: one episode is a small pure state machine (paper §2.1, §2.2).

    state = start(problem, tokenizer, config)              # tokens: the prompt (+ assistant prefill)
    loop:
        state, job = on_response(state, response_ids)       # job: public tests (None: no valid code)
        state = on_public_result(state, run(job))           # appends the feedback message, or ends
        if state.done: break
    episode = finish(state, run(final_job(state)))          # per-turn task rewards, solved flag

Nothing here runs programs or samples: the caller submits the jobs (to an `ExecutionPool`) and feeds
back the results, so every transition is a pure function of its inputs. The episode works token-in /
token-out in the tokenizer's own chat template (`rlef_jax.tokenizer.ChatTokenizer`): `tokens` is the
prompt (the optional `config.system_message` and the problem's user turn), then each response's own ids
(plus the template's end-of-turn id, appended as a non-policy token to a response cut by the token
limit), then each feedback message as `followup_ids(...)` — the rest of the assistant turn, the user
message and the next generation prompt — (+ the prefill ids); the history is never re-tokenised, and
`policy_mask` marks exactly the sampled tokens.

Termination (paper §1.5): a response passing all public tests, or the turn limit. The last response is
scored on the private (+ generated, + public) tests. Feedback variants (`config.feedback`): "true" (the
paper's), "random" (App. C.2: another problem's feedback, see `random_feedback.py`), "none" (§5.7
ablation: "Give it another try." only, no early stop), "rich" (App. B.3: each response runs on up to
`rich_num_tests` tests including private ones, up to `rich_max_failures` failures shown; early stop
still on the public tests).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rlef_jax import extract, rewards
from rlef_jax.env_config import EnvConfig, default_env_config  # noqa: F401  (re-exported)
from rlef_jax.execution.types import CaseResult, Job, JobResult, Verdict
from rlef_jax.problem import Problem  # noqa: F401  (re-exported)
from rlef_jax.random_feedback import RandomFeedback, random_feedback_job, random_feedback_text  # noqa: F401

PENDING_RESPONSE = "response"
PENDING_PUBLIC_RESULT = "public_result"
PENDING_FINAL_RESULT = "final_result"


@dataclasses.dataclass(frozen=True)
class Turn:
    """One response and what came of it.

    `tokens[prompt_end:response_end]` are the response ids (with the env-appended `<|eot_id|>` of a
    truncated response); the value of the turn is read at `prompt_end - 1`, the last prompt token
    (paper App. A.1). `feedback` is the user message that followed (None for the last turn).
    """

    response_ids: tuple[int, ...]
    response_text: str
    code: str | None
    valid: bool
    public_result: JobResult | None
    prompt_end: int
    response_end: int
    task_reward: float = 0.0
    truncated: bool = False
    feedback: str | None = None


@dataclasses.dataclass(frozen=True)
class EpisodeState:
    """An episode between two transitions; `pending` says which call comes next.

    `turn` counts the responses so far (== len(turns)); `tokenizer` is the `ChatTokenizer` the feedback
    messages are encoded with; `prefill_ids` start every assistant turn (HumanEval+, App. C.4).
    """

    problem: Problem
    config: EnvConfig
    tokenizer: object = dataclasses.field(compare=False, repr=False)
    turn: int = 0
    tokens: tuple[int, ...] = ()
    policy_mask: tuple[int, ...] = ()
    turns: tuple[Turn, ...] = ()
    done: bool = False
    pending: str = PENDING_RESPONSE
    prefill_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Episode:
    """A finished episode: the token sequence, the policy mask and the turns with their task rewards."""

    problem: Problem
    tokens: tuple[int, ...]
    policy_mask: tuple[int, ...]
    turns: tuple[Turn, ...]
    solved: bool
    final_result: JobResult | None
    final_groups: tuple[tuple[str, int], ...] = ()  # (test role, count) of the final job's cases, in order
    turn_test_count: int = 0  # tests each response ran on (public; "rich" feedback: more)

    @property
    def task_rewards(self) -> tuple[float, ...]:
        return tuple(t.task_reward for t in self.turns)


def initial_messages(problem: Problem, config: EnvConfig) -> list[dict[str, str]]:
    """The dialogue's first messages: `config.system_message` (when set) and the problem's user turn."""
    system = [] if config.system_message is None else [{"role": "system", "content": config.system_message}]
    return [*system, *(dict(m) for m in problem.messages)]


def dialogue(state: "EpisodeState") -> list[dict[str, str]]:
    """The episode's messages so far (assistant turns as decoded text, prefill included)."""
    messages = initial_messages(state.problem, state.config)
    for turn in state.turns:
        messages.append({"role": "assistant", "content": (state.problem.prefill or "") + turn.response_text})
        if turn.feedback is not None:
            messages.append({"role": "user", "content": turn.feedback})
    return messages


def start(problem: Problem, tokenizer, env_config=None) -> EpisodeState:
    """The episode's first state: the tokens of the initial prompt and the assistant prefill (if any)."""
    config = EnvConfig.from_config(env_config)
    prefill_ids = tuple(tokenizer.encode(problem.prefill)) if problem.prefill else ()
    tokens = (*tokenizer.encode_dialog(initial_messages(problem, config)), *prefill_ids)
    return EpisodeState(problem=problem, config=config, tokenizer=tokenizer, tokens=tokens,
                        policy_mask=(0,) * len(tokens), prefill_ids=prefill_ids)


def _expect(state: EpisodeState, pending: str, call: str) -> None:
    if state.pending != pending:
        raise ValueError(f"{call} called on episode {state.problem.name!r} while it awaits {state.pending!r} "
                         f"(after {len(state.turns)} turns); follow start → on_response → on_public_result.")


def _check_response_ids(state: EpisodeState, response_ids) -> tuple[int, ...]:
    ids = tuple(int(i) for i in response_ids)
    vocab = state.tokenizer.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"Response ids {bad[:5]} are outside the tokenizer's vocabulary [0, {vocab}).")
    stops = state.tokenizer.stop_ids
    if any(i in stops for i in ids[:-1]):
        raise ValueError("A response holds a stop token before its end: cut sampled ids after the first stop "
                         "token (and drop padding) before calling on_response.")
    return ids


def public_job_cases(problem: Problem, config: EnvConfig) -> tuple:
    """The tests a response runs on: the public tests, or for "rich" feedback the first
    `max(rich_num_tests, #public)` of public, private, generated (paper App. B.3)."""
    if config.feedback != "rich":
        return problem.public_cases
    pool = problem.public_cases + problem.private_cases + problem.generated_cases
    return pool[:max(config.rich_num_tests, len(problem.public_cases))]


def on_response(state: EpisodeState, response_ids: Sequence[int]) -> tuple[EpisodeState, Job | None]:
    """Appends a sampled response; returns the job of its public tests, or None without valid code."""
    _expect(state, PENDING_RESPONSE, "on_response")
    ids = _check_response_ids(state, response_ids)
    tokenizer, config, problem = state.tokenizer, state.config, state.problem
    truncated = not ids or ids[-1] not in tokenizer.stop_ids
    appended = (tokenizer.end_of_turn_id,) if truncated else ()
    text = tokenizer.decode(ids)
    code = extract.extract_code(text, rule=config.code_extraction, prefill=problem.prefill)
    valid = extract.is_valid_code(code)
    prompt_end = len(state.tokens)
    tokens = state.tokens + ids + appended
    turn = Turn(response_ids=ids, response_text=text, code=code, valid=valid, public_result=None,
                prompt_end=prompt_end, response_end=len(tokens), truncated=truncated)
    mask = state.policy_mask + (1,) * len(ids) + (0,) * len(appended)
    new = dataclasses.replace(state, turn=state.turn + 1, tokens=tokens, policy_mask=mask,
                              turns=state.turns + (turn,), pending=PENDING_PUBLIC_RESULT)
    job = problem.job(code, public_job_cases(problem, config)) if valid else None
    return new, job


def invalid_code_results(problem: Problem, code: str | None, cases: Sequence) -> list[CaseResult]:
    """What the executor reports per test for a program without valid code: NO_CODE, or SYNTAX_ERROR with
    the compiler's message (so the feedback is the executor's, without running anything)."""
    error = extract.syntax_error(code) if code is not None and code.strip() else None
    if error is None:
        return [CaseResult(Verdict.NO_CODE) for _ in cases]
    return [CaseResult(Verdict.SYNTAX_ERROR, error=error) for _ in cases]


def public_passed(problem: Problem, result: JobResult | None) -> bool:
    """Whether `result` (of the public job) passes every public test (early-stopping rule, paper §1.5)."""
    if result is None or result.program_verdict is not None:
        return False
    public = result.cases[:len(problem.public_cases)]
    return len(public) == len(problem.public_cases) and all(c.verdict == Verdict.PASSED for c in public)


def feedback_needed(state: EpisodeState, result: JobResult | None) -> bool:
    """Whether `on_public_result(state, result)` will append a feedback message (so the caller knows
    when it must run `random_feedback_job` for the "random" variant)."""
    _expect(state, PENDING_PUBLIC_RESULT, "feedback_needed")
    if len(state.turns) >= state.config.max_turns:
        return False
    return state.config.feedback == "none" or not public_passed(state.problem, result)


def feedback_text(state: EpisodeState, result: JobResult | None, random_feedback_text: str | None = None) -> str:
    """The user message after a failed turn, per `config.feedback` (and `invalid_code_feedback`)."""
    config, problem, last = state.config, state.problem, state.turns[-1]
    if config.feedback == "none":
        return problem.retry_message()
    if config.feedback == "random":
        if not isinstance(random_feedback_text, str):
            raise ValueError("feedback='random' needs random_feedback_text=...: run the jobs of "
                             "random_feedback.random_feedback_job and render them with random_feedback_text.")
        return random_feedback_text
    cases = public_job_cases(problem, config)
    if result is None:
        if config.invalid_code_feedback == "reminder":
            return problem.retry_message()
        result = JobResult(None, invalid_code_results(problem, last.code, cases))
    if len(result.cases) != len(cases):
        raise ValueError(f"The public job result of {problem.name!r} has {len(result.cases)} case results for "
                         f"{len(cases)} tests; pass the result of the job on_response returned.")
    return problem.render_feedback(cases, result.cases, config.truncation(rich=config.feedback == "rich"))


def on_public_result(state: EpisodeState, result: JobResult | None, *,
                     random_feedback_text: str | None = None) -> EpisodeState:
    """Records the public-test result of the last response, then ends the episode or appends feedback."""
    _expect(state, PENDING_PUBLIC_RESULT, "on_public_result")
    last = state.turns[-1]
    if last.valid != (result is not None):
        raise ValueError(
            f"on_public_result got {'a result' if result is not None else 'None'} for a response "
            f"{'with' if last.valid else 'without'} valid code: pass the result of the job on_response "
            "returned, or None when it returned no job.")
    if not feedback_needed(state, result):
        turns = state.turns[:-1] + (dataclasses.replace(last, public_result=result),)
        return dataclasses.replace(state, turns=turns, done=True, pending=PENDING_FINAL_RESULT)
    text = feedback_text(state, result, random_feedback_text)
    tokenizer = state.tokenizer
    ids = (*tokenizer.followup_ids(dialogue(state), "user", text), *state.prefill_ids)
    turns = state.turns[:-1] + (dataclasses.replace(last, public_result=result, feedback=text),)
    return dataclasses.replace(state, tokens=state.tokens + ids, policy_mask=state.policy_mask + (0,) * len(ids),
                               turns=turns, pending=PENDING_RESPONSE)


def final_groups(problem: Problem, config: EnvConfig) -> tuple[tuple[str, int], ...]:
    """The test roles the final solution is scored on, with their counts, in job order (paper §2.2)."""
    groups = ((("public", len(problem.public_cases)),) if config.score_public_tests else ()) + (
        ("private", len(problem.private_cases)),)
    if config.use_generated_tests_for_reward:
        groups += (("generated", len(problem.generated_cases)),)
    return groups


def final_job(state: EpisodeState) -> Job | None:
    """The job scoring the final (last) response: None when it has no valid code (paper §1.5)."""
    _expect(state, PENDING_FINAL_RESULT, "final_job")
    last = state.turns[-1]
    if not last.valid:
        return None
    problem, config = state.problem, state.config
    cases = ((problem.public_cases if config.score_public_tests else ()) + problem.private_cases
             + (problem.generated_cases if config.use_generated_tests_for_reward else ()))
    return problem.job(last.code, cases)


def finish(state: EpisodeState, final_result: JobResult | None) -> Episode:
    """The finished episode with per-turn task rewards (paper §2.2)."""
    _expect(state, PENDING_FINAL_RESULT, "finish")
    last, config = state.turns[-1], state.config
    if last.valid != (final_result is not None):
        raise ValueError("finish needs the result of final_job(state), or None exactly when it returned None.")
    solved = final_result is not None and final_result.passed
    task = rewards.task_rewards(
        [t.valid for t in state.turns], solved, success_reward=config.success_reward,
        failure_reward=config.failure_reward, invalid_code_penalty=config.invalid_code_penalty,
        final_turn_invalid_penalty_stacks=config.final_turn_invalid_penalty_stacks)
    turns = tuple(dataclasses.replace(t, task_reward=r) for t, r in zip(state.turns, task))
    return Episode(problem=state.problem, tokens=state.tokens, policy_mask=state.policy_mask, turns=turns,
                   solved=solved, final_result=final_result, final_groups=final_groups(state.problem, config),
                   turn_test_count=len(public_job_cases(state.problem, config)))


def play_episode(problem: Problem, tokenizer, respond, pool, env_config=None, *,
                 random_pool: Sequence[Problem] = (), rng=None) -> Episode:
    """Plays one episode sequentially: the reference loop (and the one tests use) for `rollout.py`.

    `respond(state) -> response ids` is the policy; `pool` runs jobs (`ExecutionPool`). The "random"
    variant needs `random_pool` (problems to borrow feedback from) and `rng` (numpy Generator).
    """
    state = start(problem, tokenizer, env_config)
    while not state.done:
        state, job = on_response(state, respond(state))
        result = pool.submit(job).result() if job is not None else None
        random_text = None
        if state.config.feedback == "random" and feedback_needed(state, result):
            borrowed = random_feedback_job(problem, random_pool, rng, env_config=state.config)
            results = [pool.submit(j).result() for j in borrowed.jobs]
            random_text = random_feedback_text(borrowed, results, env_config=state.config)
        state = on_public_result(state, result, random_feedback_text=random_text)
    job = final_job(state)
    return finish(state, pool.submit(job).result() if job is not None else None)
