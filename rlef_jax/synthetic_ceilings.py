"""The synthetic family's 1@3 ceilings, measured with the real environment and executor.

    python -m rlef_jax.synthetic_ceilings [--num-problems 400] [--seed 7] [--workers 2]

Plays scripted policies (rlef_jax.synthetic) through `env.play_episode` on a generated set and prints
the solve rate (1@3: the final solution of one episode passes public + private + generated tests) and
the mean number of turns, for each (policy, feedback variant):

* `reference` reads the statement and the feedback (property (b): the feedback-using ceiling, 1.0);
* `blind` ignores the feedback content and tries `SEPARATORS[0], [1], [2]`: the best any policy can do
  without reading feedback (3/8 in expectation with early stopping, 1/8 with "none", where the 3rd
  answer is scored).
"""
from __future__ import annotations

import argparse
import concurrent.futures

import numpy as np

from rlef_jax import env, synthetic
from rlef_jax.synthetic_tokenizer import DEFAULT_DIR

POLICIES = ("reference", "blind")
VARIANTS = ("true", "random", "none")


def policy(name: str, tokenizer):
    """`respond(state) -> ids` for a scripted policy of the family (responses end with `<|eot_id|>`)."""
    def respond(state):
        statement = state.problem.messages[0]["content"]
        if name == "reference":
            text = synthetic.reference_response(statement, [t.feedback for t in state.turns])
        elif name == "blind":
            text = synthetic.blind_response(statement, len(state.turns))
        else:
            raise ValueError(f"Unknown scripted policy {name!r}; expected one of {POLICIES}.")
        return [*tokenizer.encode(text), tokenizer.eot_id]
    return respond


def measure(problems, tokenizer, pool, policy_name: str, feedback: str, *, seed: int = 0,
            threads: int = 4) -> tuple[float, float]:
    """(1@3 solve rate, mean turns) of `policy_name` under `feedback` over `problems`."""
    config = {"feedback": feedback}

    def play(i):
        rng = np.random.default_rng([seed, i])
        return env.play_episode(problems[i], tokenizer, policy(policy_name, tokenizer), pool, config,
                                random_pool=problems, rng=rng)

    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        episodes = list(ex.map(play, range(len(problems))))
    return (float(np.mean([e.solved for e in episodes])), float(np.mean([len(e.turns) for e in episodes])))


def main(argv=None) -> None:
    from rlef_jax.execution import ExecutionPool
    from rlef_jax.tokenizer import ChatTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-problems", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    tokenizer = ChatTokenizer.load(DEFAULT_DIR)
    problems = [env.Problem.from_record("synthetic", r) for r in synthetic.generate_problems(args.num_problems, args.seed)]
    separators = [p.private_cases[0].output.strip() for p in problems]
    in_first_three = np.mean([any(s in out for s in synthetic.SEPARATORS[:3]) for out in separators])
    print(f"{len(problems)} problems (seed {args.seed}); share whose separator is among the blind policy's "
          f"first 3 tries: {in_first_three:.3f} (expectation 3/8 = 0.375)")
    print("| policy | feedback | 1@3 | mean turns |\n|---|---|---|---|")
    with ExecutionPool(workers=args.workers) as pool:
        for name in POLICIES:
            for variant in VARIANTS:
                rate, turns = measure(problems, tokenizer, pool, name, variant, seed=args.seed)
                print(f"| {name} | {variant} | {rate:.3f} | {turns:.2f} |", flush=True)


if __name__ == "__main__":
    main()
