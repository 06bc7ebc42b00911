"""Evaluation: multi-turn 1@3 and single-turn pass@1 / 1@3 on a split (paper §5.1).

  python -m rlef_jax.evaluate --config=configs/tiny.py --workdir=DIR [--checkpoint=STEP|PATH] [--split=valid]

* Multi-turn (MT) 1@3: one rollout of up to `eval.max_turns` responses at temperature 0.2, top-p 0.95;
  the submission is the rollout's final solution (paper §5.1).
* Single-turn (ST): three independent first responses; pass@1 is the rate at which one response passes
  all tests, and ST 1@3 submits the first of the three that passes the public tests, else the last
  ([I] paper §5.1, the same public-test rule).
* 95% intervals: bootstrap over episodes, `config.eval.bootstrap_resamples` resamples (default 200, as
  paper §5.1), 2.5 and 97.5 percentiles.

Every episode is written next to the summary (`NAME.episodes.jsonl`, one JSON object per line), so
other estimators and the error analysis of paper Fig. 3 need no rerun: `problem`, `mode`
(multi_turn / single_turn), `turns`, `valid` and `public_passed` per turn, `solved`, `truncated`;
`turn_log`, per turn: `response` (decoded text), `code` (extracted program or null), `valid`,
`truncated` (cut by the token limit), `public_verdicts` (one letter per test the response ran on:
P passed, W wrong answer, E runtime error, T timeout, M out of memory, N no code, S syntax error) and
`feedback` (the user message shown next, null after the last turn); `final_verdicts` (the final
solution's letter per scored test) with `final_groups` ([role, count] of those tests in order, e.g.
[["public", 1], ["private", 5]]).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from rlef_jax import errors
from rlef_jax import rollout as rollout_lib

BOOTSTRAP_RESAMPLES = 200  # paper §5.1 (config.eval.bootstrap_resamples)


def bootstrap_interval(successes: Sequence[float], seed: int = 0,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
  """2.5 / 97.5 percentiles of the mean over bootstrap resamples of `successes`."""
  x = np.asarray(successes, np.float64)
  if x.size == 0:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _summary(successes: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
  lo, hi = bootstrap_interval(successes, seed, resamples)
  return {"mean": float(np.mean(successes)) if len(successes) else float("nan"),
          "ci95": [lo, hi], "episodes": len(successes)}


# One letter per test verdict in episode records (`verdict_codes`).
VERDICT_CODES = {"passed": "P", "wrong_answer": "W", "runtime_error": "E", "timeout": "T",
                 "out_of_memory": "M", "no_code": "N", "syntax_error": "S"}


def verdict_codes(result: Any, num_cases: int, code: str | None = None) -> str:
  """A job result's per-test verdicts as one letter each (`VERDICT_CODES`, in test order). A response
  without valid code ran nothing: every test is "N" (no code) or "S" (it does not compile)."""
  if result is None:
    from rlef_jax import extract  # pylint: disable=g-import-not-at-top
    no_code = code is None or not code.strip() or extract.syntax_error(code) is None
    return ("N" if no_code else "S") * num_cases
  return "".join(VERDICT_CODES[c.verdict.value] for c in result.cases)


def episode_outcome(record: rollout_lib.EpisodeRecord) -> dict[str, Any]:
  """One episode for the records: the summary fields the estimators read, and what error analysis
  needs without a rerun (paper Fig. 3): per turn the response, the extracted code, per-public-test
  verdicts and the feedback shown; the final solution's verdicts per scored test."""
  from rlef_jax import env as env_lib  # pylint: disable=g-import-not-at-top
  ep = record.episode
  turn_log = [{"response": t.response_text, "code": t.code, "valid": bool(t.valid),
               "truncated": bool(t.truncated),
               "public_verdicts": verdict_codes(t.public_result, ep.turn_test_count, t.code),
               "feedback": t.feedback} for t in ep.turns]
  return {"problem": ep.problem.name,
          "turns": len(ep.turns),
          "valid": [bool(t.valid) for t in ep.turns],
          "public_passed": [env_lib.public_passed(ep.problem, t.public_result) for t in ep.turns],
          "solved": bool(ep.solved),
          "truncated": bool(record.truncated),
          "turn_log": turn_log,
          "final_verdicts": verdict_codes(ep.final_result, sum(n for _, n in ep.final_groups),
                                          ep.turns[-1].code),
          "final_groups": [list(g) for g in ep.final_groups]}


def single_turn_one_at_three(outcomes: Sequence[dict[str, Any]]) -> list[float]:
  """ST 1@3 over consecutive triples of single-turn outcomes of the same problem: submit the first
  response that passes the public tests, else the third."""
  successes = []
  for i in range(0, len(outcomes) - len(outcomes) % 3, 3):
    triple = outcomes[i:i + 3]
    assert len({o["problem"] for o in triple}) == 1, "triples must share a problem"
    chosen = next((o for o in triple if o["public_passed"][0]), triple[-1])
    successes.append(float(chosen["solved"]))
  return successes


def run_split(engine: rollout_lib.RolloutEngine, params: Any, problems: Sequence[Any], rng: Any
              ) -> tuple[list[dict[str, Any]], rollout_lib.RolloutStats]:
  """Every episode's outcome, in the order of `problems`; with several processes each runs an
  equal block (the last process's padded with repeats that are dropped) and all get every outcome."""
  import jax  # pylint: disable=g-import-not-at-top
  from rlef_jax import distributed  # pylint: disable=g-import-not-at-top
  count, index = jax.process_count(), jax.process_index()
  per = -(-len(problems) // count)
  padded = list(problems) + [problems[-1]] * (per * count - len(problems))
  records, stats = engine.run(params, padded[index * per:(index + 1) * per], rng)
  outcomes = [episode_outcome(r) for r in records]
  gathered = [o for part in distributed.allgather_objects(outcomes) for o in part]
  return gathered[:len(problems)], stats


def evaluate(engine_mt: rollout_lib.RolloutEngine, engine_st: rollout_lib.RolloutEngine | None,
             params: Any, problems: Sequence[Any], *, num_rollouts: int, rng: Any,
             seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Runs the evaluation episodes; returns (summary, per-episode outcomes)."""
  import jax  # pylint: disable=g-import-not-at-top

  mt_problems = [p for p in problems for _ in range(num_rollouts)]
  mt, stats = run_split(engine_mt, params, mt_problems, jax.random.fold_in(rng, 0))
  mt = [dict(o, mode="multi_turn") for o in mt]
  summary: dict[str, Any] = {
      "problems": len(problems), "rollouts_per_problem": num_rollouts,
      "multi_turn_1at3": _summary([o["solved"] for o in mt], seed, resamples),
      "multi_turn_turns_mean": float(np.mean([o["turns"] for o in mt])),
      "multi_turn_first_turn_pass": _summary(
          [float(o["public_passed"][0] and o["turns"] == 1 and o["solved"]) for o in mt], seed, resamples),
      "rollout_seconds": stats.seconds,
  }
  outcomes = mt
  if engine_st is not None:
    st_problems = [p for p in problems for _ in range(3 * num_rollouts)]
    st, st_stats = run_split(engine_st, params, st_problems, jax.random.fold_in(rng, 1))
    st = [dict(o, mode="single_turn") for o in st]
    summary["single_turn_pass1"] = _summary([o["solved"] for o in st], seed, resamples)
    summary["single_turn_1at3"] = _summary(single_turn_one_at_three(st), seed, resamples)
    summary["single_turn_rollout_seconds"] = st_stats.seconds
    outcomes = mt + st
  return summary, outcomes


def write_results(directory: str, name: str, summary: dict[str, Any],
                  outcomes: Sequence[dict[str, Any]]) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{name}.json")
  with errors.writing(path), open(path, "w") as f:
    json.dump(summary, f, indent=2)
  episodes = os.path.join(directory, f"{name}.episodes.jsonl")
  with errors.writing(episodes), open(episodes, "w") as f:
    for o in outcomes:
      f.write(json.dumps(o) + "\n")
  return path


def format_summary(summary: dict[str, Any]) -> str:
  def one(key):
    s = summary[key]
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] (n={s['episodes']})"
  # The summary key keeps its name at any turn limit; the label shows the limit evaluated (1@T).
  turns = summary.get("max_turns", 3)
  feedback = summary.get("feedback", "true")
  parts = [f"MT 1@{turns}{'' if feedback == 'true' else f' ({feedback} feedback)'} "
           f"{one('multi_turn_1at3')}"]
  if "single_turn_pass1" in summary:
    parts += [f"ST pass@1 {one('single_turn_pass1')}", f"ST 1@3 {one('single_turn_1at3')}"]
  return "; ".join(parts)


def main(argv: Sequence[str]) -> None:
  from rlef_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  train_lib.evaluate_main(argv)


if __name__ == "__main__":
  from rlef_jax import cli  # pylint: disable=g-import-not-at-top
  from rlef_jax import train as _train  # noqa: F401  (defines the shared flags)
  cli.run(main, required=["config"])
