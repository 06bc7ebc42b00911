"""Per-turn rates of an evaluation's episode file, per mode (multi-turn / single-turn): how often each
turn's answer is valid code and passes the public tests, how often a later turn repeats the previous
turn's code, how concentrated the first answers to a problem are, and how many test runs timed out.

  python experiments/diagnostics/episode_stats.py WORKDIR/eval/step_0.episodes.jsonl[.gz] [...]

A policy that reads the feedback shows it at turn 2: its public-pass rate there rises above turn 1's,
and it repeats its previous code less. A policy that sharpens onto one first answer per problem before
it learns to repair shows a first-answer mode share near 1 (its single-turn 1@3 falls to its pass@1)
and many repeats. A timed-out test run on a machine shared with other work can be a verdict of the
machine, not of the program: the count says whether any occurred.
"""
from __future__ import annotations

import collections
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from rlef_jax import estimators  # noqa: E402


def _code(turn: dict[str, Any]) -> str:
  return (turn.get("code") or "").strip()


def stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per mode: episodes, solve rate, mean turns, truncated episodes; per turn t the episodes reaching
  it, valid and public-pass rates, and (t >= 2, from `turn_log`) the share of those turns whose code is
  the previous turn's code, non-empty; the mean over problems with two or more first answers holding
  code of the share of them giving the problem's most common one (None without `turn_log`); and the number
  of test runs with a timeout verdict ('T' in `public_verdicts` and `final_verdicts`)."""
  out: dict[str, dict[str, Any]] = {}
  for mode in sorted({r.get("mode", "multi_turn") for r in rows}):
    rs = [r for r in rows if r.get("mode", "multi_turn") == mode]
    logged = all(isinstance(r.get("turn_log"), list) and len(r["turn_log"]) == len(r["public_passed"])
                 for r in rs)  # every turn's code is in the record
    per_turn = []
    for t in range(max(len(r["public_passed"]) for r in rs)):
      reached = [r for r in rs if len(r["public_passed"]) > t]
      with_valid = [r for r in reached if len(r.get("valid") or []) > t]  # optional in a record
      row = {"turn": t + 1, "reached": len(reached),
             "valid": (sum(bool(r["valid"][t]) for r in with_valid) / len(with_valid)
                       if with_valid else None),
             "public": sum(bool(r["public_passed"][t]) for r in reached) / len(reached),
             "repeats": None}
      if t and logged:
        row["repeats"] = sum(bool(_code(r["turn_log"][t])) and
                             _code(r["turn_log"][t]) == _code(r["turn_log"][t - 1])
                             for r in reached) / len(reached)
      per_turn.append(row)
    mode_share = None
    if logged:
      by_problem: dict[str, list[str]] = collections.defaultdict(list)
      for r in rs:
        by_problem[r["problem"]].append(_code(r["turn_log"][0]))  # "" when the answer had no code
      by_problem = {p: [c for c in codes if c] for p, codes in by_problem.items()}
      shares = [collections.Counter(codes).most_common(1)[0][1] / len(codes)
                for codes in by_problem.values() if len(codes) > 1]
      mode_share = sum(shares) / len(shares) if shares else None
    timeouts = sum(str(r.get("final_verdicts") or "").count("T") for r in rs)
    if logged:
      timeouts += sum(str(t.get("public_verdicts") or "").count("T") for r in rs for t in r["turn_log"])
    out[mode] = {"episodes": len(rs), "solved": sum(bool(r["solved"]) for r in rs) / len(rs),
                 "turns": sum(int(r.get("turns", len(r["public_passed"]))) for r in rs) / len(rs),
                 "truncated": sum(bool(r.get("truncated")) for r in rs),
                 "per_turn": per_turn, "first_answer_mode_share": mode_share, "timeouts": timeouts}
  return out


def main(paths: list[str]) -> int:
  for path in paths:
    try:
      rows = estimators.read_episodes(path)
    except estimators.RecordError as e:  # read_episodes reports unreadable files so too
      print(f"episode_stats: {e}", file=sys.stderr)  # the message names the file
      return 2
    if not rows:
      print(f"episode_stats: {path}: no episodes", file=sys.stderr)
      return 2
    print(path)
    for mode, s in stats(rows).items():
      share = s["first_answer_mode_share"]
      print(f"{mode}: n={s['episodes']} solved={s['solved']:.3f} turns={s['turns']:.2f} "
            f"truncated={s['truncated']} timeouts={s['timeouts']} first-answer mode share="
            + ("-" if share is None else f"{share:.3f}"))
      for row in s["per_turn"]:
        repeats = "" if row["repeats"] is None else f", repeats previous code {row['repeats']:.3f}"
        valid = "-" if row["valid"] is None else f"{row['valid']:.3f}"
        print(f"  turn {row['turn']}: reached by {row['reached']}, valid code {valid}, "
              f"passes public tests {row['public']:.3f}{repeats}")
  return 0


if __name__ == "__main__":
  if len(sys.argv) < 2:
    print("usage: " + next(line for line in __doc__.splitlines() if "python " in line).strip(),
          file=sys.stderr)
    sys.exit(2)
  try:
    sys.exit(main(sys.argv[1:]))
  except BrokenPipeError:  # the reader stopped early (e.g. `| head`): nothing more to say
    sys.stderr.close()
    sys.exit(0)
