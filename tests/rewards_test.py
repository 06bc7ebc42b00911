"""Per-turn task rewards (paper §2.2) against the table written out by hand."""
import itertools

import pytest

from rlef_jax import rewards

KW = dict(success_reward=1.0, failure_reward=-1.0, invalid_code_penalty=-0.2)


@pytest.mark.parametrize("valid,solved,stacks,expected", [
    ([True], True, False, (1.0,)),
    ([True], False, False, (-1.0,)),
    ([False, True], True, False, (-0.2, 1.0)),
    ([False, False, False], False, False, (-0.2, -0.2, -1.0)),
    ([False, False, False], False, True, (-0.2, -0.2, -1.2)),
    ([True, False, True], False, True, (0.0, -0.2, -1.0)),
])
def test_reward_table(valid, solved, stacks, expected):
    got = rewards.task_rewards(valid, solved, final_turn_invalid_penalty_stacks=stacks, **KW)
    assert got == pytest.approx(expected)


def test_all_short_episodes_sum_to_the_paper_formula():
    for n in (1, 2, 3):
        for valid in itertools.product([False, True], repeat=n):
            for solved in ([False, True] if valid[-1] else [False]):
                got = rewards.task_rewards(valid, solved, final_turn_invalid_penalty_stacks=False, **KW)
                assert sum(got) == pytest.approx(-0.2 * valid[:-1].count(False) + (1.0 if solved else -1.0))


def test_errors():
    with pytest.raises(ValueError, match="at least one turn"):
        rewards.task_rewards([], False, final_turn_invalid_penalty_stacks=False, **KW)
    with pytest.raises(ValueError, match="cannot be solved"):
        rewards.task_rewards([False], True, final_turn_invalid_penalty_stacks=False, **KW)
