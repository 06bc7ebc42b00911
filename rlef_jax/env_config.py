"""The environment's configuration: `config.env` (each open point is a field; docs/method.md "Open points").

`default_env_config()` is the one place the defaults live (an `ml_collections.ConfigDict`, one comment
per field); `EnvConfig.from_config` validates a user's `config.env` against it and freezes it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import ml_collections

from rlef_jax.execution.feedback import Truncation

FEEDBACK_VARIANTS = ("true", "random", "none", "rich")
INVALID_CODE_FEEDBACK = ("per_test", "reminder")
PREFILL_FORMATS = ("raw", "fenced")


def default_env_config() -> ml_collections.ConfigDict:
    """The environment defaults (paper §2, App. A.2, B.3, C.1, C.2)."""
    c = ml_collections.ConfigDict()
    c.max_turns = 3  # LLM attempts per episode, train and eval (paper §1.5 [C])
    c.system_message = ml_collections.config_dict.placeholder(str)  # [U] system message of every dialogue; None = none, i.e. what the chat template renders without one (Llama 3.0: nothing; Llama 3.1/3.2: a system header with only the knowledge-cutoff and date lines; SmolLM2's ChatML: its own default "You are a helpful AI assistant named SmolLM, ..."). The paper mentions none (§1.1).
    c.feedback = "true"  # 'true' | 'random' (App. C.2) | 'none' (§5.7: retry prompt only, no early stop) | 'rich' (App. B.3, inference)
    c.invalid_code_penalty = -0.2  # task reward of a non-final turn whose response has no valid code (§2.2 [C])
    c.success_reward = 1.0  # final-turn reward when the final solution passes all scoring tests (§2.2 [C])
    c.failure_reward = -1.0  # final-turn reward otherwise (§2.2 [C])
    c.final_turn_invalid_penalty_stacks = False  # [U] a final turn without valid code gets failure + penalty (True) or failure only
    c.use_generated_tests_for_reward = True  # [U] score the final solution on CodeContests generated tests too (eval uses them, App. B.3)
    c.score_public_tests = True  # [C] §2.2 "whether all public and private tests are passing": public tests are part of the score
    c.prefill_format = "raw"  # [U] HumanEval+'s assistant prefill (App. C.4: the starter code starts every response): 'raw' = the starter code as is, 'fenced' = "```python\n" + starter code, so a chat model continues inside a code block
    c.code_extraction = "last_block"  # [U] 'last_block' | 'first_block' fenced python block; valid = compiles (rlef_jax/extract.py)
    c.invalid_code_feedback = "per_test"  # [U] feedback after a response without valid code: 'per_test' = what the executor reports on each public test (compile error, or "No Python code was found in the response."), 'reminder' = only "Give it another try." + instructions
    c.max_feedback_chars = 2000  # [U] characters kept of each input / expected / observed output in feedback (0: no cut, as the paper shows)
    c.max_feedback_error_chars = 4000  # [U] characters kept of each stack trace in feedback (0: no cut)
    c.max_failures_shown = 0  # [U] failing tests listed per feedback message (0: all, as in App. C.1); 'rich' uses rich_max_failures
    c.rich_num_tests = 20  # 'rich' feedback: tests run per response, public first, then private, generated (App. B.3 [C])
    c.rich_max_failures = 8  # 'rich' feedback: failing tests shown at most (App. B.3 [C])
    c.random_feedback_candidates = 4  # 'random' feedback: incorrect solutions of the other problem tried, in random order, before `raise NotImplementedError()` (App. C.2; [U] how many)
    c.default_time_s = 10.0  # per-test wall-clock limit when the problem gives none (App. A.2 [C])
    c.default_memory_bytes = 1 << 30  # memory limit when the problem gives none (App. A.2 [C]: 1 GB)
    return c


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """A validated, immutable `config.env` (field meanings: `default_env_config`)."""

    max_turns: int
    system_message: str | None
    feedback: str
    invalid_code_penalty: float
    success_reward: float
    failure_reward: float
    final_turn_invalid_penalty_stacks: bool
    use_generated_tests_for_reward: bool
    score_public_tests: bool
    code_extraction: str
    invalid_code_feedback: str
    prefill_format: str
    max_feedback_chars: int | None
    max_feedback_error_chars: int | None
    max_failures_shown: int
    rich_num_tests: int
    rich_max_failures: int
    random_feedback_candidates: int
    default_time_s: float
    default_memory_bytes: int

    @classmethod
    def from_config(cls, config=None) -> "EnvConfig":
        """`config.env` (ConfigDict or mapping; missing fields take the defaults), an EnvConfig, or None."""
        if isinstance(config, EnvConfig):
            return config
        values = default_env_config().to_dict()
        if config is not None:
            given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
            if not isinstance(given, Mapping):
                raise TypeError(f"config.env must be a ConfigDict or a mapping, got {type(config).__name__}.")
            unknown = sorted(set(given) - set(values))
            if unknown:
                raise ValueError(f"Unknown config.env fields {unknown}; the fields are {sorted(values)} "
                                 "(see rlef_jax.env_config.default_env_config).")
            values.update(given)
        out = cls(**values)
        out._validate()
        return out

    def _validate(self) -> None:
        def fail(field, expected):
            raise ValueError(f"config.env.{field} must be {expected}, got {getattr(self, field)!r}.")

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        if not is_int(self.max_turns) or self.max_turns < 1:
            fail("max_turns", "a positive int")
        if self.system_message is not None and not isinstance(self.system_message, str):
            fail("system_message", "None (the template's default) or a string")
        if self.feedback not in FEEDBACK_VARIANTS:
            fail("feedback", f"one of {FEEDBACK_VARIANTS}")
        if self.code_extraction not in ("last_block", "first_block"):
            fail("code_extraction", "'last_block' or 'first_block'")
        if self.prefill_format not in PREFILL_FORMATS:
            fail("prefill_format", f"one of {PREFILL_FORMATS}")
        if self.invalid_code_feedback not in INVALID_CODE_FEEDBACK:
            fail("invalid_code_feedback", f"one of {INVALID_CODE_FEEDBACK}")
        for field in ("invalid_code_penalty", "success_reward", "failure_reward"):
            if isinstance(getattr(self, field), bool) or not isinstance(getattr(self, field), (int, float)):
                fail(field, "a number")
        if self.invalid_code_penalty > 0:
            fail("invalid_code_penalty", "<= 0 (a penalty)")
        for field in ("final_turn_invalid_penalty_stacks", "use_generated_tests_for_reward", "score_public_tests"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "True or False")
        for field in ("max_feedback_chars", "max_feedback_error_chars", "max_failures_shown"):
            value = getattr(self, field)
            if value is not None and (not is_int(value) or value < 0):
                fail(field, "a non-negative int (0: no limit)")
        for field in ("rich_num_tests", "rich_max_failures", "random_feedback_candidates"):
            if not is_int(getattr(self, field)) or getattr(self, field) < 1:
                fail(field, "a positive int")
        if isinstance(self.default_time_s, bool) or not isinstance(self.default_time_s, (int, float)) \
                or not self.default_time_s > 0:
            fail("default_time_s", "a positive number of seconds")
        if not is_int(self.default_memory_bytes) or self.default_memory_bytes < (64 << 20):
            fail("default_memory_bytes", "an int of at least 64 MiB")

    def truncation(self, *, rich: bool = False) -> Truncation:
        """The feedback module's truncation for this config ('rich' caps failures at rich_max_failures)."""
        def limit(value):
            return value or None

        return Truncation(input_chars=limit(self.max_feedback_chars), output_chars=limit(self.max_feedback_chars),
                          error_chars=limit(self.max_feedback_error_chars),
                          max_failures=self.rich_max_failures if rich else limit(self.max_failures_shown))
