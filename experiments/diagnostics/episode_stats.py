"""Per-turn rates of an evaluation's episode file: how often each turn's answer is valid code and passes
the public tests, per mode (multi-turn / single-turn).

  python experiments/diagnostics/episode_stats.py WORKDIR/eval/step_0.episodes.jsonl

A policy that reads the feedback shows it at turn 2: its public-pass rate there rises above turn 1's.
"""
import json
import sys


def main(path: str) -> None:
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  for mode in sorted({r["mode"] for r in rows}):
    rs = [r for r in rows if r["mode"] == mode]
    print(f"{mode}: n={len(rs)} solved={sum(r['solved'] for r in rs) / len(rs):.3f} "
          f"turns={sum(r['turns'] for r in rs) / len(rs):.2f} truncated={sum(r['truncated'] for r in rs)}")
    for t in range(max(r["turns"] for r in rs)):
      reached = [r for r in rs if len(r["valid"]) > t]
      valid = sum(r["valid"][t] for r in reached) / len(reached)
      public = sum(r["public_passed"][t] for r in reached) / len(reached)
      print(f"  turn {t + 1}: reached by {len(reached)}, valid code {valid:.3f}, passes public tests {public:.3f}")


if __name__ == "__main__":
  main(sys.argv[1])
