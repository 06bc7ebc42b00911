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

Below the estimators: `run_evaluation` evaluates params of a built run (`experiment.Run`) with the
evaluation's own settings (`config.eval`: temperature, turn limit, feedback variant) and writes
`WORKDIR/eval/NAME.json` and `NAME.episodes.jsonl`; `record_best` keeps `WORKDIR/best.json` on the
best evaluated checkpoint; `main` is the command, which evaluates one checkpoint for each feedback
variant and turn budget asked for.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import flax.linen as nn
import jax
import numpy as np

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import cli
from rlef_jax import commands
from rlef_jax import distributed
from rlef_jax import env as env_lib
from rlef_jax import env_config as env_config_lib
from rlef_jax import errors
from rlef_jax import experiment
from rlef_jax import extract
from rlef_jax import rollout as rollout_lib
from rlef_jax import sharding
from rlef_jax import storage
from rlef_jax import warmstart

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "a train step in the workdir, 'best' (WORKDIR/best.json), "
                                  "'warmstart'/'reference', or a params directory (default: the latest "
                                  "train checkpoint).")
_SPLIT = flags.DEFINE_string("split", None, "the split (default config.eval.split).")
_FEEDBACK = flags.DEFINE_list("feedback", None, "feedback variants to evaluate, e.g. true,random,none "
                              "(default config.eval.feedback).")
_MAX_TURNS = flags.DEFINE_list("max_turns", None, "turn budgets to evaluate, e.g. 1,2,3,5,10 (default "
                               "config.eval.max_turns).")

EVAL_DIR = "eval"  # WORKDIR/eval: NAME.json summaries and NAME.episodes.jsonl records

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
    no_code = code is None or not code.strip() or extract.syntax_error(code) is None
    return ("N" if no_code else "S") * num_cases
  return "".join(VERDICT_CODES[c.verdict.value] for c in result.cases)


def episode_outcome(record: rollout_lib.EpisodeRecord) -> dict[str, Any]:
  """One episode for the records: the summary fields the estimators read, and what error analysis
  needs without a rerun (paper Fig. 3): per turn the response, the extracted code, per-public-test
  verdicts and the feedback shown; the final solution's verdicts per scored test."""
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


def write_results(directory: str | os.PathLike, name: str, summary: dict[str, Any],
                  outcomes: Sequence[dict[str, Any]]) -> str:
  """Writes `DIR/NAME.json` (the summary) and `DIR/NAME.episodes.jsonl` (one line per episode), each
  whole or not at all (local or object-store `DIR`); returns the summary's path. The episodes are
  written first: a summary on disk always has its episodes."""
  directory = storage.makedirs(directory)
  storage.write_atomic(directory / f"{name}.episodes.jsonl",
                       "".join(json.dumps(o) + "\n" for o in outcomes))
  path = directory / f"{name}.json"
  storage.write_atomic(path, json.dumps(summary, indent=2))
  return os.fspath(path)


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


# ---------------------------------------------------------------------------------------------
# Evaluating params of a run (the trainer's evaluations and this module's command)


def eval_env_config(config: Any, max_turns: int, feedback: str) -> Any:
  """`config.env` with the evaluation's turn limit and feedback variant (not the training ones)."""
  env_config = config.env.copy_and_resolve_references()
  with env_config.unlocked():
    env_config.max_turns = max_turns
    env_config.feedback = feedback
  return env_config


def evaluation_engines(run: experiment.Run, *, max_turns: Optional[int] = None, feedback: Optional[str] = None
                       ) -> tuple[rollout_lib.RolloutEngine, rollout_lib.RolloutEngine]:
  """Multi-turn and single-turn engines of the evaluation (default: config.eval's turns and feedback)."""
  c = run.config
  settings = experiment.rollout_settings(c, evaluation=True)
  max_turns = c.eval.max_turns if max_turns is None else max_turns
  feedback = c.eval.feedback if feedback is None else feedback
  mt = rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                 eval_env_config(c, max_turns, feedback), settings, run.mesh)
  st = rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                 eval_env_config(c, 1, "true"), settings, run.mesh)
  return mt, st


def run_evaluation(run: experiment.Run, params: Any, problems: Sequence[Any], name: str, rng: jax.Array,
                   single_turn: bool = True, *, checkpoint: str = "", step: Optional[int] = None,
                   split: str = "", max_turns: Optional[int] = None, feedback: Optional[str] = None
                   ) -> dict:
  """Evaluates `params` on `problems`; writes `eval/NAME.json` (summary with what was evaluated how)
  and `eval/NAME.episodes.jsonl` (every episode, rlef_jax/evaluate.py)."""
  c = run.config
  max_turns = c.eval.max_turns if max_turns is None else max_turns
  feedback = c.eval.feedback if feedback is None else feedback
  mt, st = evaluation_engines(run, max_turns=max_turns, feedback=feedback)
  summary, outcomes = evaluate(
      mt, st if single_turn and c.eval.single_turn else None, params, problems,
      num_rollouts=c.eval.num_rollouts_per_problem, rng=rng, seed=c.train.seed,
      resamples=c.eval.bootstrap_resamples)
  summary.update(name=name, checkpoint=checkpoint, step=step, dataset=c.eval.dataset or c.data.name,
                 split=split or c.eval.split, feedback=feedback, max_turns=max_turns,
                 temperature=c.eval.temperature, top_p=c.eval.top_p)
  if jax.process_index() == 0:
    path = write_results(storage.path(run.workdir) / EVAL_DIR, name, summary, outcomes)
    logging.info("evaluation %s: %s (%s)", name, format_summary(summary), path)
    print(f"[eval {name}] {format_summary(summary)}", flush=True)
  return summary


BEST_FILE = "best.json"


def record_best(workdir: str | os.PathLike, summary: dict, metric: str) -> None:
  """Keeps `WORKDIR/best.json` pointing at the evaluated checkpoint with the highest `metric` on the
  evaluation split (paper App. A.1: the final checkpoint is selected on valid); ties keep the earlier."""
  if jax.process_index() != 0 or metric not in summary:
    return
  path = storage.path(workdir) / BEST_FILE
  value = float(summary[metric]["mean"])
  if path.exists():
    best = json.loads(path.read_text())
    if best.get("metric") == metric and best["value"] >= value:
      return
  entry = {"checkpoint": summary["checkpoint"], "step": summary["step"], "metric": metric, "value": value,
           "split": summary.get("split"), "evaluation": summary["name"]}
  storage.write_atomic(path, json.dumps(entry, indent=2))


# ---------------------------------------------------------------------------------------------
# The command


def evaluated_params(run: experiment.Run, which: Optional[str]) -> tuple[Any, str, Optional[int]]:
  """(params, checkpoint name, step) of `--checkpoint`: a step, 'best', 'warmstart'/'reference', a
  params directory, or (None) the latest train checkpoint."""
  c, workdir = run.config, storage.path(run.workdir)
  shardings = sharding.param_shardings(run.policy_model, run.mesh)
  if which == "best":
    path = workdir / BEST_FILE
    if not path.exists():
      raise errors.MissingPathError(f"--checkpoint=best: {path} does not exist (it is written by training "
                                    "runs that evaluate, train.eval_every > 0 or the final evaluation)")
    best = json.loads(path.read_text())
    print(f"[evaluate] best checkpoint by {best['metric']} on {best.get('split')}: {best['checkpoint']} "
          f"({best['value']:.4f})", flush=True)
    which = "reference" if best["checkpoint"] == "reference" else str(best["step"])
  if which in ("warmstart", "reference"):
    params, _ = checkpoint_lib.restore_params(workdir / warmstart.REFERENCE_DIR,
                                              shardings=shardings,
                                              verify=c.train.verify_checkpoints)
    return params, "reference", 0
  if _is_params_directory(which):
    return experiment.restore_policy_params(run, which), storage.path(which).name, None
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints",
                                             verify=c.train.verify_checkpoints)
  step = int(which) if which else checkpointer.latest_step()
  if step is None:
    raise errors.MissingPathError(f"no train checkpoint in {workdir}/checkpoints; pass --checkpoint")
  # The policy alone: the value model and the optimizer moments stay on disk.
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(sharding.abstract_params(run.policy_model)), shardings)
  params = checkpointer.restore_part(step, "policy_params", abstract)
  return params, f"step_{step}", step


def _is_params_directory(which: Optional[str]) -> bool:
  """`--checkpoint` names a directory (local or a URL) rather than a step or a keyword."""
  return bool(which) and (storage.is_url(which) or os.path.isdir(which)) and storage.path(which).is_dir()


def check_evaluated_checkpoint(workdir: str | os.PathLike, which: Optional[str]) -> None:
  """`--checkpoint` (None: the latest train checkpoint) names something that exists."""
  workdir = storage.path(workdir)
  if which == "best":
    path = workdir / BEST_FILE
    if not (path.exists() and not path.is_dir()):
      raise errors.MissingPathError(f"--checkpoint=best: {path} does not exist (it is written by "
                                    "training runs that evaluate, train.eval_every > 0 or the final "
                                    "evaluation)")
  elif which in ("warmstart", "reference"):
    path = workdir / warmstart.REFERENCE_DIR
    if not path.is_dir():
      raise errors.MissingPathError(f"--checkpoint={which}: {path} does not exist (a training run or "
                                    "python -m rlef_jax.warmstart on this workdir writes it)")
  elif _is_params_directory(which):
    return
  elif which and not which.isdigit():
    raise errors.MissingPathError(f"--checkpoint={which}: neither a step, 'best', 'warmstart'/"
                                  f"'reference' nor an existing params directory{experiment.cwd_note(which)}")
  elif not (workdir / "checkpoints").is_dir():
    raise errors.MissingPathError(f"no train checkpoint in {workdir / 'checkpoints'} "
                                  f"(--workdir={workdir}); train first, or pass --checkpoint")


def main(argv: Sequence[str]) -> None:
  """`python -m rlef_jax.evaluate`: evaluate a checkpoint of a workdir on a split, for each feedback
  variant and turn budget asked for (`--feedback`, `--max_turns`: a sweep over one checkpoint)."""
  c, workdir = commands.command_args(argv)
  feedbacks = _FEEDBACK.value or [c.eval.feedback]
  bad = [f for f in feedbacks if f not in env_config_lib.FEEDBACK_VARIANTS]
  if bad:
    raise app.UsageError(f"--feedback: unknown variants {bad}; choose from "
                         f"{list(env_config_lib.FEEDBACK_VARIANTS)}")
  try:
    budgets = [int(t) for t in (_MAX_TURNS.value or [c.eval.max_turns])]
  except ValueError:
    raise app.UsageError(f"--max_turns must be positive integers, got {_MAX_TURNS.value}") from None
  if any(t < 1 for t in budgets):
    raise app.UsageError(f"--max_turns must be positive integers, got {budgets}")
  check_evaluated_checkpoint(workdir, _CHECKPOINT.value)
  distributed.initialize(c)
  run = experiment.build(c, workdir)
  try:
    params, name, step = evaluated_params(run, _CHECKPOINT.value)
    split = _SPLIT.value or c.eval.split
    problems = experiment.eval_problems(c, split, run.pool)
    default = (c.eval.feedback, c.eval.max_turns)
    for i, (feedback, turns) in enumerate((f, t) for f in feedbacks for t in budgets):
      suffix = "" if (feedback, turns) == default else f"_{feedback}_t{turns}"
      # Single-turn samples do not depend on the feedback or the budget: drawn once per command.
      run_evaluation(run, params, problems, f"evaluate_{name}_{split}{suffix}",
                     jax.random.key(c.train.seed + 7), single_turn=i == 0, checkpoint=name, step=step,
                     split=split, max_turns=turns, feedback=feedback)
  finally:
    run.close()


if __name__ == "__main__":
  cli.run(main, required=["config"])
