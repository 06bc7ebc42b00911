"""The paper's feedback templates, character for character (App. C.1, C.4, C.5), and truncation."""
from rlef_jax.execution import CallCase, CaseResult, IOCase, Verdict
from rlef_jax.execution.feedback import Truncation, codecontests_feedback, evalplus_feedback, truncate

TAIL = ("Your code should be enclosed in triple backticks like so: ```python YOUR CODE HERE ```. "
        "Use the backticks for your code only.")


def test_codecontests_message_matches_the_paper():
    cases = [IOCase("5\n1 2 3 4 5\n", "0 2 12 22\n"), IOCase("2\n", "1\n"), IOCase("3\n", "x"),
             IOCase("4\n", "y"), IOCase("6\n", "ok\n")]
    results = [CaseResult(Verdict.WRONG_ANSWER, "0 2 12 22\n", "0 2 14 36 "),
               CaseResult(Verdict.RUNTIME_ERROR, error="Traceback (most recent call last):\nValueError: bad\n"),
               CaseResult(Verdict.TIMEOUT), CaseResult(Verdict.OUT_OF_MEMORY), CaseResult(Verdict.PASSED)]
    expected = ("Your code failed the following tests:\n\n"
                "- input `5\n1 2 3 4 5\n` failed:\nExpected output `0 2 12 22\n` but got `0 2 14 36 `\n"
                "- input `2\n` failed:\nTraceback (most recent call last):\nValueError: bad\n"
                "- input `3\n` failed: Execution took too long.\n"
                "- input `4\n` failed: Out of memory.\n"
                "\nGive it another try.\n" + TAIL)
    assert codecontests_feedback(cases, results) == expected


def test_evalplus_messages_match_the_paper():
    cases = [CallCase("assertEqual(f(1), 2)", "[1]", "2"), CallCase("assertEqual(f(2), 3)", "[2]", "3"),
             CallCase("assertEqual(f(3), 4)", "[3]", "4"), CallCase("assertEqual(f(4), 5)", "[4]", "5")]
    results = [CaseResult(Verdict.WRONG_ANSWER, "2", "1", error="AssertionError: 1 != 2"),
               CaseResult(Verdict.RUNTIME_ERROR, error="Traceback (most recent call last):\nKeyError: 2\n"),
               CaseResult(Verdict.TIMEOUT), CaseResult(Verdict.PASSED)]
    body = ("Your code failed some test cases:\n\n"
            "- Failure: `assertEqual(f(1), 2)`:\n`AssertionError: 1 != 2`\n"
            "- Failure: `assertEqual(f(2), 3)`:\nTraceback (most recent call last):\nKeyError: 2\n"
            "- Failure: `assertEqual(f(3), 4)`:\nExecution took too long.\n"
            "- Success: `assertEqual(f(4), 5)`\n\nGive it another try.")
    assert evalplus_feedback(cases, results, trailer=False) == body
    assert evalplus_feedback(cases, results, trailer=True) == body + "\n" + TAIL


def test_truncation_is_announced_and_bounded():
    long = "".join(str(i % 10) for i in range(10000))
    cut = truncate(long, 300)
    assert "characters truncated" in cut and cut.startswith(long[:200]) and cut.endswith(long[-100:])
    assert "[... 9700 characters truncated ...]" in cut
    msg = codecontests_feedback([IOCase(long, "1")], [CaseResult(Verdict.WRONG_ANSWER, "1", long)],
                                Truncation(input_chars=100, output_chars=50, error_chars=10))
    assert long not in msg and msg.count("characters truncated") == 2
    assert truncate("short", 300) == "short"


def test_max_failures_says_how_many_were_left_out():
    cases = [IOCase(str(i), "x") for i in range(5)]
    results = [CaseResult(Verdict.TIMEOUT)] * 5
    msg = codecontests_feedback(cases, results, Truncation(max_failures=2))
    assert msg.count("Execution took too long.") == 2 and "(3 more failing tests not shown)" in msg
