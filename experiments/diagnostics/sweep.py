"""Runs the main job (rlef_jax.train) for several settings x seeds at once and summarises them.

  python experiments/diagnostics/sweep.py --out DIR --seeds 0,1,2 \
      --setting base= --setting lr1e-3=optim.lr=1e-3 [--extra train.num_updates=40] [--jobs N]

Each `--setting NAME=K=V,K=V` is a list of `--config.K=V` overrides of configs/tiny.py (or `--config`);
every setting runs once per seed in DIR/NAME.sSEED (train.seed = SEED). At most `--jobs` runs go at
once (default: all). `--summarise-only` summarises runs already there (finished or not). Writes
DIR/summary.json and prints a table: multi-turn 1@3 before and after RL with bootstrap intervals, and the training curve of `solve/public_at_turn2` (the share of answers after
a feedback message that pass: rises when the policy starts reading the feedback). Meant for tuning the
tiny config over seeds; the per-run logs are DIR/NAME.sSEED.log.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time


def _curve(metrics_path: str, key: str, every: int = 10) -> list:
  rows = []
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  out = []
  for lo in range(0, max((r.get("step", 0) for r in rows), default=0), every):
    vals = [r[key] for r in rows if key in r and lo < r.get("step", 0) <= lo + every]
    out.append(round(sum(vals) / len(vals), 3) if vals else None)
  return out


def _eval(workdir: str, pattern: str) -> dict | None:
  files = sorted(glob.glob(os.path.join(workdir, "eval", pattern)))
  if not files:
    return None
  with open(files[-1]) as f:
    return json.load(f)


def summarise(workdir: str) -> dict:
  before, after = _eval(workdir, "step_0.json"), _eval(workdir, "*_final.json")
  pick = lambda d, k: d[k] if d else None
  metrics = os.path.join(workdir, "metrics.jsonl")
  return {"mt_1at3_before": pick(before, "multi_turn_1at3"), "mt_1at3_after": pick(after, "multi_turn_1at3"),
          "st_pass1_before": pick(before, "single_turn_pass1"), "st_pass1_after": pick(after, "single_turn_pass1"),
          "public_at_turn2": _curve(metrics, "solve/public_at_turn2"),
          "private": _curve(metrics, "solve/private"),
          "valid_code": _curve(metrics, "episode/valid_code"),
          "round_seconds": _curve(metrics, "round/seconds")}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True)
  ap.add_argument("--config", default="configs/tiny.py")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--setting", action="append", default=[], help="NAME=K=V,K=V (overrides of --config)")
  ap.add_argument("--extra", action="append", default=[], help="K=V override for every run")
  ap.add_argument("--jobs", type=int, default=0)
  ap.add_argument("--python", default=sys.executable)
  ap.add_argument("--summarise-only", action="store_true", help="summarise the runs already in --out")
  args = ap.parse_args()
  settings = {}
  for s in args.setting or ["base="]:
    name, _, overrides = s.partition("=")
    settings[name] = [o for o in overrides.split(",") if o]
  os.makedirs(args.out, exist_ok=True)
  runs = [(name, int(seed)) for name in settings for seed in args.seeds.split(",")]
  pending, active, start = ([] if args.summarise_only else list(runs)), {}, time.time()
  while pending or active:
    while pending and (not args.jobs or len(active) < args.jobs):
      name, seed = pending.pop(0)
      workdir = os.path.join(args.out, f"{name}.s{seed}")
      flags = [f"--config.{o}" for o in settings[name] + args.extra] + [f"--config.train.seed={seed}"]
      cmd = [args.python, "-m", "rlef_jax.train", f"--config={args.config}", f"--workdir={workdir}", *flags]
      log = open(workdir + ".log", "w")
      active[(name, seed)] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
      print(f"[sweep] started {name} seed {seed}: {' '.join(flags)}", flush=True)
    time.sleep(2)
    for key, (proc, log) in list(active.items()):
      if proc.poll() is not None:
        log.close()
        del active[key]
        print(f"[sweep] {key[0]} seed {key[1]} exited {proc.returncode} at {time.time() - start:.0f} s",
              flush=True)
  summary = {f"{n}.s{s}": {"setting": n, "seed": s, "overrides": settings[n],
                           **summarise(os.path.join(args.out, f"{n}.s{s}"))} for n, s in runs}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  fmt = lambda m: f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" if m else "-"
  for key, r in summary.items():
    print(f"{key:28s} MT 1@3 {fmt(r['mt_1at3_before'])} -> {fmt(r['mt_1at3_after'])}  "
          f"public@turn2 by 10 updates: {r['public_at_turn2']}")


if __name__ == "__main__":
  main()
