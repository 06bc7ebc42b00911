"""Per-turn task rewards of an episode (paper §2.2; docs/method.md §2).

r(s_t, a_t) is +1 / −1 at the end of the episode (the final solution passes / fails all tests), −0.2
for an earlier turn whose response has no valid code, and 0 otherwise. The KL term of the reward
(−β · log π/ρ per turn) is added by the PPO code, which has the log-probabilities.
"""
from __future__ import annotations

from collections.abc import Sequence


def task_rewards(
    valid_per_turn: Sequence[bool],
    solved: bool,
    *,
    success_reward: float,
    failure_reward: float,
    invalid_code_penalty: float,
    final_turn_invalid_penalty_stacks: bool,
) -> tuple[float, ...]:
    """The task reward of every turn of one episode, in turn order.

    `solved` says whether the final (last) response's code passes all scoring tests; a final response
    without valid code is never solved. Whether it also takes the invalid-code penalty is the paper's
    open point [U] (`final_turn_invalid_penalty_stacks`; default no: −1 only).
    """
    valid = [bool(v) for v in valid_per_turn]
    if not valid:
        raise ValueError("An episode has at least one turn; got no turns to reward.")
    if solved and not valid[-1]:
        raise ValueError("An episode whose final response has no valid code cannot be solved.")
    rewards = [0.0 if v else float(invalid_code_penalty) for v in valid[:-1]]
    final = float(success_reward if solved else failure_reward)
    if not valid[-1] and final_turn_invalid_penalty_stacks:
        final += float(invalid_code_penalty)
    return (*rewards, final)
