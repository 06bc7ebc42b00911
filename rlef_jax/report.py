"""Paper-shaped tables and plots from evaluation records (paper §3, Tables 1–6, Fig. 3, Fig. 4).

  python -m rlef_jax.report WORKDIR [WORKDIR ...] [--out DIR] [--label NAME ...] [--resamples 200]
      [--seed 0] [--unit problems|samples]

Reads every `WORKDIR/eval/NAME.json` (summary) with its `NAME.episodes.jsonl`, and `WORKDIR/metrics.jsonl`
(training scalars), and writes to DIR (default: the first workdir's `report/`):

* `report.md`: Table 1's shape (n@k: MT 1@3, MT 10@100, ST 10@100 per model before / after RL, one
  column per dataset/split), Table 2's (ST vs MT 1@3 per dataset/split), Table 3/6-style rows (one
  per model and evaluation setting: feedback true / random / none / rich, turn limit, temperature) and
  a list of every evaluation. Each number is a solve rate in % with its 95% bootstrap interval and
  [problems × samples per problem]; a cell the records cannot support (10@100 from 20 rollouts per
  problem, ST 1@3 without single-turn samples) is "—" with a note saying why.
* `report.json`: the same numbers unrounded, per record and per table cell.
* PNG plots (matplotlib, Agg): `training.png` (MT 1@3 of the evaluations over training updates with
  interval bands, and the training rounds' `solve/private`), `turn_limit.png` (MT pass@1 and pass@10
  against the turn limit, from records that differ only in `max_turns`, one series per feedback kind;
  Fig. 4a), `sample_budget.png` (1@k and 10@k against the budget k of samples, ST vs MT; Fig. 4b) and
  `errors.png` (Fig. 3 per turn: verdict categories of the public tests, exact repeats of the previous
  turn's code, mean 1 − chrF between consecutive programs). A plot without data is skipped and the
  report says so.

Metrics and intervals are those of `rlef_jax/estimators.py` (its docstring has the exact definitions):
problems weigh equally, n@k filters on the public tests without fill, ST 1@3 is the order-free
expectation, MT budgets of B turns buy B // max_turns rollouts, intervals resample problems (default).

Records: "before RL" is the checkpoint `reference` / `warmstart` or step 0; "after RL" the largest
step of the workdir's records (per column: the column's own largest step, noted when it differs).
Metadata missing from older summaries is taken from the record's name where the trainer / evaluator
name it (`step_800`, `step_800_final`, `evaluate_<checkpoint>_<split>`) and otherwise shown as "?";
a missing `max_turns` is the largest turn count in the episodes, at least 3 (`eval.max_turns`'s
default), marked as inferred. Records without an episodes file fall back to the summary's own means
and episode-level intervals (noted). Bad input (missing workdir, no records, corrupt JSON) ends with
one line naming the file and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from rlef_jax import estimators as est
from rlef_jax.report_plots import PLOT_FILES, PLOTS
from rlef_jax.report_records import Options, ReportError, Workdir, load_workdir, workdir_labels
from rlef_jax.report_tables import (ALL_METRICS, cell, table_ablations, table_all, table_n_at_k,
                                    table_st_vs_mt)


# --------------------------------------------------------------------------------------------------
# The report


def _interval_text(opts: Options) -> str:
  unit = ("problems resampled with replacement (the population of problems; wider than the "
          "episode-level intervals of rlef_jax.evaluate)" if opts.unit == "problems" else
          "each problem's samples resampled, problems fixed (sampling noise only, like the "
          "episode-level intervals of rlef_jax.evaluate)")
  return (f"95% intervals: bootstrap, {opts.resamples} resamples (seed {opts.seed}), 2.5 and 97.5 "
          f"percentiles; {unit}.")


def build_report(workdirs: Sequence[Workdir], opts: Options) -> tuple[str, dict[str, Any], dict]:
  """(markdown, json data, figures by plot name) of the workdirs."""
  tables = {"table1_n_at_k": table_n_at_k(workdirs, opts),
            "table2_st_vs_mt": table_st_vs_mt(workdirs, opts),
            "ablations": table_ablations(workdirs, opts),
            "all_evaluations": table_all(workdirs, opts)}
  figures = {name: fn(workdirs, opts) for name, fn in PLOTS.items()}
  lines = ["# RLEF evaluation report", "",
           "Workdirs: " + ", ".join(f"`{w.label}` ({w.path}, {len(w.records)} records)"
                                    for w in workdirs), "",
           "Solve rates in %, problems weighted equally; cells: mean (95% interval) "
           "[problems × samples per problem]. " + _interval_text(opts),
           "MT 1@T: mean of `solved` over rollouts of up to T turns. ST 1@3: first of 3 independent "
           "responses that passes the public tests, else the last, as the exact expectation over all "
           "triples and orders of a problem's single-turn samples. n@k: k samples drawn without "
           "replacement, up to n of those passing the public tests submitted (none added when fewer "
           "pass); MT budgets of B turns buy B // T rollouts (10@100 = 10 of 33 finals at T = 3). "
           "\"—\": the records cannot support the number (see the notes); \"?\": not recorded. "
           "Definitions: rlef_jax/estimators.py.", ""]
  for t in tables.values():
    lines += [t.render(), ""]
  lines += ["## Plots", ""]
  for name, fig in figures.items():
    if fig is None:
      lines.append(f"- {PLOT_FILES[name]}: not drawn, no records with the data it needs.")
    else:
      lines.append(f"- ![{name}]({PLOT_FILES[name]})")
  data = {
      "options": dataclasses.asdict(opts),
      "workdirs": [{"label": w.label, "path": w.path} for w in workdirs],
      "records": [{"model": r.model, "path": r.path, "name": r.name, "checkpoint": r.checkpoint,
                   "step": r.step, "dataset": r.dataset, "split": r.split, "feedback": r.feedback,
                   "max_turns": r.max_turns, "max_turns_inferred": r.max_turns_inferred,
                   "temperature": r.temperature, "top_p": r.top_p,
                   "metrics": {k: cell(r, k, opts).as_json() for k in ALL_METRICS}}
                  for w in workdirs for r in w.records],
      "tables": {k: t.cells for k, t in tables.items()},
      "plots": {k: (PLOT_FILES[k] if f is not None else None) for k, f in figures.items()},
  }
  return "\n".join(lines) + "\n", data, figures


def write_report(workdirs: Sequence[Workdir], out: str, opts: Options) -> dict[str, Any]:
  markdown, data, figures = build_report(workdirs, opts)
  try:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
      f.write(markdown)
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
      json.dump(data, f, indent=1, allow_nan=True)
    for name, fig in figures.items():
      if fig is not None:
        fig.savefig(os.path.join(out, PLOT_FILES[name]), dpi=100)
  except OSError as e:
    raise ReportError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
  return data


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m rlef_jax.report", description=__doc__.split("\n")[0])
  p.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  p.add_argument("--out", help="output directory (default: the first workdir's report/)")
  p.add_argument("--label", action="append", help="a name per workdir, in order (default: basename)")
  p.add_argument("--resamples", type=int, default=est.BOOTSTRAP_RESAMPLES)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--unit", choices=("problems", "samples"), default="problems",
                 help="bootstrap unit: resample problems (default) or each problem's samples")
  args = p.parse_args(argv)
  if args.resamples < 1:
    p.error("--resamples must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  opts = Options(args.resamples, args.seed, args.unit)
  try:
    labels = workdir_labels(args.workdirs, args.label)
    workdirs = [load_workdir(p, l) for p, l in zip(args.workdirs, labels)]
    out = args.out or os.path.join(args.workdirs[0], "report")
    data = write_report(workdirs, out, opts)
  except ReportError as e:
    print(f"rlef_jax.report: error: {e}", file=sys.stderr)
    return 2
  drawn = [f for f in data["plots"].values() if f]
  print(f"[report] wrote {os.path.join(out, 'report.md')} and report.json"
        f"{', ' + ', '.join(drawn) if drawn else ''} ({len(data['records'])} records)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
