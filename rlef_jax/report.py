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
import collections
import dataclasses
import json
import os
import re
import sys
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from rlef_jax import estimators as est

EVAL_DIR = "eval"  # rlef_jax.evaluate.EVAL_DIR (not imported: evaluate pulls in jax)
METRICS_FILE = "metrics.jsonl"  # rlef_jax.metrics.JSONL_NAME
TRAIN_SOLVE_KEY = "solve/private"
PAPER_TEMPERATURE = {"1@3": 0.2, "10@100": 1.0}  # paper §3.1
BEFORE_CHECKPOINTS = ("reference", "warmstart", "step_0")
PLOT_FILES = {"training": "training.png", "turn_limit": "turn_limit.png",
              "sample_budget": "sample_budget.png", "errors": "errors.png"}


class ReportError(Exception):
  """Bad input: the message is one line that names the file."""


@dataclasses.dataclass(frozen=True)
class Options:
  resamples: int = est.BOOTSTRAP_RESAMPLES
  seed: int = 0
  unit: str = "problems"


# --------------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass(eq=False)
class Record:
  """One evaluation: its summary, metadata (None = unknown) and grouped episodes."""
  model: str
  path: str
  name: str
  summary: dict[str, Any]
  checkpoint: str | None
  step: int | None
  dataset: str | None
  split: str | None
  feedback: str | None
  max_turns: int
  max_turns_inferred: bool
  temperature: float | None
  top_p: float | None
  episodes: list[dict[str, Any]] | None  # None: no episodes file (or an empty one)
  samples: est.EpisodeSamples
  cells: dict[Any, "Cell"] = dataclasses.field(default_factory=dict)

  @property
  def column(self) -> str:
    return f"{self.dataset or '?'}/{self.split or '?'}"

  @property
  def is_before(self) -> bool:
    return self.checkpoint in BEFORE_CHECKPOINTS or self.step == 0

  @property
  def x_step(self) -> int | None:
    """Training updates behind the checkpoint (0 before RL), None when unknown."""
    return 0 if self.is_before else self.step

  @property
  def setting(self) -> tuple[Any, ...]:
    return (self.feedback, self.max_turns, self.temperature, self.top_p)

  @property
  def standard(self) -> bool:
    """The paper's main setting: true feedback (or unrecorded), turn limit 3."""
    return self.feedback in (None, "true") and self.max_turns == 3

  @property
  def sample_count(self) -> int:
    return sum(len(p.samples) for p in self.samples.multi_turn + self.samples.single_turn)


@dataclasses.dataclass(eq=False)
class Workdir:
  label: str
  path: str
  records: list[Record]
  metrics: list[dict[str, Any]]


def _load_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ReportError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ReportError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _meta(summary: dict[str, Any], key: str, kinds: tuple[type, ...], path: str) -> Any:
  value = summary.get(key)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise ReportError(f"{path}: '{key}' must be {' or '.join(k.__name__ for k in kinds)}, "
                      f"got {value!r}")
  return value


_SPLIT = re.compile(r"^(train|valid|validation|test)(\[.*\])?$")
_STEP = re.compile(r"^step_(\d+)$")


def names_metadata(name: str) -> dict[str, Any]:
  """Checkpoint, step and split that the trainer's and evaluator's record names carry:
  `step_800`, `step_800_final` (periodic / final evaluations of training) and
  `evaluate_<checkpoint>_<split>` (`python -m rlef_jax.evaluate`)."""
  out: dict[str, Any] = {}
  m = re.match(r"^(step_\d+)(_final)?$", name)
  checkpoint = m.group(1) if m else None
  if name.startswith("evaluate_"):
    rest = name[len("evaluate_"):]
    head, _, tail = rest.rpartition("_")
    if head and _SPLIT.match(tail):
      checkpoint, out["split"] = head, tail
    else:
      checkpoint = rest
  if checkpoint:
    out["checkpoint"] = checkpoint
    step = _STEP.match(checkpoint)
    if step:
      out["step"] = int(step.group(1))
  return out


def _check_metric_entry(summary: dict[str, Any], key: str, path: str) -> None:
  entry = summary.get(key)
  if entry is None:
    return
  ok = (isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float))
        and isinstance(entry.get("ci95"), list) and len(entry["ci95"]) == 2
        and all(isinstance(v, (int, float)) for v in entry["ci95"]))
  if not ok:
    raise ReportError(f"{path}: '{key}' must be {{\"mean\": number, \"ci95\": [lo, hi], ...}}")


SUMMARY_METRICS = {"mt_1atT": "multi_turn_1at3", "st_pass1": "single_turn_pass1",
                   "st_1at3": "single_turn_1at3"}


def load_record(path: str, model: str) -> Record:
  """A summary file and its episodes (`NAME.episodes.jsonl` next to it, optional)."""
  summary = _load_json(path)
  if not isinstance(summary, dict):
    raise ReportError(f"{path}: expected a JSON object, got {type(summary).__name__}")
  name = os.path.basename(path)[:-len(".json")]
  from_name = names_metadata(str(summary.get("name") or name))
  if summary.get("name") is not None and not isinstance(summary["name"], str):
    raise ReportError(f"{path}: 'name' must be str, got {summary['name']!r}")
  for key in SUMMARY_METRICS.values():
    _check_metric_entry(summary, key, path)
  _meta(summary, "rollouts_per_problem", (int,), path)
  _meta(summary, "problems", (int,), path)
  episodes_path = path[:-len(".json")] + ".episodes.jsonl"
  episodes = None
  if os.path.exists(episodes_path):
    try:
      episodes = est.read_episodes(episodes_path) or None
    except est.RecordError as e:
      raise ReportError(str(e)) from None
  samples = est.group_samples(episodes or [])
  max_turns = _meta(summary, "max_turns", (int,), path)
  seen = max((s.turns for p in samples.multi_turn for s in p.samples), default=0)
  step = _meta(summary, "step", (int,), path)
  checkpoint = _meta(summary, "checkpoint", (str,), path)
  return Record(
      model=model, path=path, name=str(summary.get("name") or name), summary=summary,
      checkpoint=checkpoint if checkpoint is not None else from_name.get("checkpoint"),
      step=step if step is not None else from_name.get("step"),
      dataset=_meta(summary, "dataset", (str,), path),
      split=_meta(summary, "split", (str,), path) or from_name.get("split"),
      feedback=_meta(summary, "feedback", (str,), path),
      max_turns=max_turns if max_turns is not None else max(3, seen),
      max_turns_inferred=max_turns is None,
      temperature=_meta(summary, "temperature", (int, float), path),
      top_p=_meta(summary, "top_p", (int, float), path),
      episodes=episodes, samples=samples)


def load_metrics(path: str) -> list[dict[str, Any]]:
  """Training scalars (`metrics.jsonl`), each row with an integer `step`; [] without the file."""
  if not os.path.exists(path):
    return []
  try:
    rows = est.read_jsonl_numbered(path)
  except est.RecordError as e:
    raise ReportError(str(e)) from None
  for lineno, row in rows:
    if not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool):
      raise ReportError(f"{path}:{lineno}: a metrics row needs an integer 'step'")
  return [row for _, row in rows]


def load_workdir(path: str, label: str) -> Workdir:
  if not os.path.isdir(path):
    raise ReportError(f"{path}: no such workdir")
  eval_dir = os.path.join(path, EVAL_DIR)
  names = sorted(f for f in os.listdir(eval_dir) if f.endswith(".json")) if os.path.isdir(
      eval_dir) else []
  if not names:
    raise ReportError(f"{eval_dir}: no evaluation records (NAME.json written by rlef_jax.evaluate)")
  records = [load_record(os.path.join(eval_dir, n), label) for n in names]
  return Workdir(label, path, records, load_metrics(os.path.join(path, METRICS_FILE)))


def workdir_labels(paths: Sequence[str], labels: Sequence[str] | None = None) -> list[str]:
  """`labels` if given, else each workdir's base name (the whole path where two names clash)."""
  if labels:
    if len(labels) != len(paths):
      raise ReportError(f"--label given {len(labels)} times for {len(paths)} workdirs")
    return list(labels)
  base = [os.path.basename(os.path.normpath(p)) or p for p in paths]
  counts = collections.Counter(base)
  return [b if counts[b] == 1 else os.path.normpath(p) for b, p in zip(base, paths)]


# --------------------------------------------------------------------------------------------------
# Cells: one metric of one record


@dataclasses.dataclass(frozen=True)
class Cell:
  """A solve rate with its interval and support, or a missing value (`mean` None) and why."""
  mean: float | None
  ci95: tuple[float, float] | None = None
  problems: int = 0
  samples: tuple[int, int] = (0, 0)
  note: str | None = None  # why missing, or how the number was obtained when not from episodes
  source: str = "episodes"

  def as_json(self) -> dict[str, Any]:
    return {"mean": self.mean, "ci95": list(self.ci95) if self.ci95 else None,
            "problems": self.problems, "samples_per_problem": list(self.samples),
            "note": self.note, "source": self.source}


@dataclasses.dataclass(frozen=True)
class Metric:
  label: str
  mode: str  # "multi_turn" | "single_turn"
  need: Callable[[Record], int]  # samples per problem the estimate needs
  per_problem: Callable[[Record], Callable[[Sequence[Any]], float]]


def _mt_label(rec: Record | None) -> str:
  return f"MT 1@{rec.max_turns}" if rec is not None else "MT 1@3"


METRICS: dict[str, Metric] = {
    "mt_1atT": Metric("MT 1@3", "multi_turn", lambda r: 1, lambda r: est.mt_solve_rate),
    "mt_pass10": Metric("MT pass@10", "multi_turn", lambda r: 10,
                        lambda r: lambda s: est.pass_at_k_of(s, 10)),
    "mt_10at100": Metric("MT 10@100", "multi_turn",
                         lambda r: est.rollouts_for_budget(100, r.max_turns),
                         lambda r: lambda s: est.mt_n_at_budget(s, 10, 100, r.max_turns)),
    "st_pass1": Metric("ST pass@1", "single_turn", lambda r: 1,
                       lambda r: lambda s: est.pass_at_k_of(s, 1)),
    "st_1at3": Metric("ST 1@3", "single_turn", lambda r: 3, lambda r: est.st_one_at_three),
    "st_10at100": Metric("ST 10@100", "single_turn", lambda r: 100,
                         lambda r: lambda s: est.n_at_k(s, 10, 100)),
}


def _summary_cell(rec: Record, key: str, why: str) -> Cell:
  """A metric the summary carries itself, for records without episodes."""
  entry = rec.summary.get(SUMMARY_METRICS.get(key, ""))
  if entry is None:
    return Cell(None, note=why)
  problems = rec.summary.get("problems") or 0
  per = rec.summary.get("rollouts_per_problem") or 0
  per = 3 * per if METRICS[key].mode == "single_turn" else per
  note = "from the summary: interval over episodes (rlef_jax.evaluate)"
  if key == "st_1at3":
    note += ", order-dependent ST 1@3 over consecutive triples"
  return Cell(float(entry["mean"]), (float(entry["ci95"][0]), float(entry["ci95"][1])), problems,
              (per, per), note, "summary")


def cell(rec: Record, key: str, opts: Options) -> Cell:
  """Metric `key` (METRICS) of a record, cached on the record."""
  if (key, opts) in rec.cells:
    return rec.cells[(key, opts)]
  metric = METRICS[key]
  problems = [p.samples for p in getattr(rec.samples, metric.mode)]
  kind = "multi-turn rollouts" if metric.mode == "multi_turn" else "single-turn samples"
  if not problems:
    why = "no episodes file" if rec.episodes is None else f"no {kind} in the records"
    result = _summary_cell(rec, key, why)
  else:
    need, have = metric.need(rec), min(len(s) for s in problems)
    if need < 1:
      result = Cell(None, note=f"a budget of 100 turns buys no rollout of up to {rec.max_turns} turns")
    elif have < need:
      result = Cell(None, note=f"needs >= {need} {kind} per problem; the records have {have}")
    else:
      e = est.estimate(problems, metric.per_problem(rec), resamples=opts.resamples, seed=opts.seed,
                       unit=opts.unit)
      result = Cell(e.mean, e.ci95, e.problems, e.samples)
  rec.cells[(key, opts)] = result
  return result


def _pct(x: float) -> str:
  return f"{100 * x:.1f}"


class Notes:
  """Numbered notes under a table."""

  def __init__(self):
    self.texts: list[str] = []

  def mark(self, text: str) -> str:
    if text not in self.texts:
      self.texts.append(text)
    return f"[{self.texts.index(text) + 1}]"

  def render(self) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(self.texts, 1))


def format_cell(c: Cell | None, notes: Notes, extra: Sequence[str] = ()) -> str:
  """"16.1 (15.8–16.4) [165×20]" (percent, 95% interval, problems × samples per problem), or "—"."""
  if c is None:
    return ""
  if c.mean is None:  # only why it is missing
    return "—" + (notes.mark(c.note) if c.note else "")
  marks = "".join(notes.mark(t) for t in ([c.note] if c.note else []) + list(extra))
  lo, hi = c.ci95 or (float("nan"), float("nan"))
  per = str(c.samples[0]) if c.samples[0] == c.samples[1] else f"{c.samples[0]}–{c.samples[1]}"
  return f"{_pct(c.mean)} ({_pct(lo)}–{_pct(hi)}) [{c.problems}×{per}]{marks}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  esc = lambda s: str(s).replace("|", "\\|")
  lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Selection: phases of a model and the record behind a cell


def _group(items: Iterable[Any], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
  out: dict[Any, list[Any]] = {}
  for item in items:
    out.setdefault(key(item), []).append(item)
  return out


def model_phases(records: Sequence[Record]) -> list[tuple[str, list[Record], int | None]]:
  """(label, records, step) per phase of one model: before RL; after RL (per column the column's
  largest step; `step` the model's largest); then each other checkpoint with an unknown step."""
  out = []
  before = [r for r in records if r.is_before]
  if before:
    out.append(("before RL", before, 0))
  stepped = [r for r in records if not r.is_before and r.step is not None]
  if stepped:
    last = max(r.step for r in stepped)
    chosen = [r for rs in _group(stepped, lambda r: r.column).values()
              for r in rs if r.step == max(x.step for x in rs)]
    out.append((f"after RL (step {last})", chosen, last))
  others = [r for r in records if not r.is_before and r.step is None]
  for ckpt, rs in sorted(_group(others, lambda r: r.checkpoint or r.name).items()):
    out.append((f"checkpoint {ckpt}", rs, None))
  return out


def pick(records: Sequence[Record], key: str, opts: Options,
         temperature: float | None = None) -> Record | None:
  """The record behind a cell: one where the metric is available, at the paper's temperature for it
  (when recorded), with the most samples, then the last name."""
  if not records:
    return None
  def rank(r):
    c = cell(r, key, opts)
    return (c.mean is not None, c.source == "episodes",
            temperature is None or r.temperature == temperature, r.sample_count, r.name)
  return max(records, key=rank)


SPLIT_ORDER = {"train": 0, "valid": 1, "validation": 1, "test": 2}


def _columns(records: Iterable[Record]) -> list[str]:
  """Dataset/split columns, per dataset in the paper's order: valid before test."""
  def order(column):
    dataset, _, split = column.rpartition("/")
    return dataset, SPLIT_ORDER.get(split.split("[")[0], 3), split
  return sorted({r.column for r in records}, key=order)


def _cell_extra(rec: Record, key: str, phase_step: int | None, temperature: float | None
                ) -> list[str]:
  extra = []
  if phase_step and rec.step is not None and rec.step != phase_step:
    extra.append(f"step {rec.step} (the last evaluation of this column)")
  if temperature is not None and rec.temperature is not None and rec.temperature != temperature:
    extra.append(f"temperature {rec.temperature:g} (paper: {temperature:g})")
  if rec.max_turns_inferred and METRICS[key].mode == "multi_turn":
    extra.append(f"turn limit not recorded; {rec.max_turns} assumed")
  return extra


# --------------------------------------------------------------------------------------------------
# Tables


@dataclasses.dataclass
class Table:
  title: str
  header: list[str]
  rows: list[list[str]]
  notes: Notes
  cells: list[dict[str, Any]]  # unrounded values for report.json

  def render(self) -> str:
    parts = [f"### {self.title}", ""]
    parts.append(markdown_table(self.header, self.rows) if self.rows else "(no records)")
    if self.notes.texts:
      parts += ["", self.notes.render()]
    return "\n".join(parts)


def _table_cell(table: Table, rec: Record | None, key: str, opts: Options, row: dict[str, Any],
                column: str, phase_step: int | None = None, temperature: float | None = None) -> str:
  if rec is None:
    return format_cell(Cell(None, note="no evaluation record"), table.notes)
  c = cell(rec, key, opts)
  extra = _cell_extra(rec, key, phase_step, temperature)
  table.cells.append({**row, "column": column, "metric": METRICS[key].label if key != "mt_1atT"
                      else _mt_label(rec), "record": rec.path, **c.as_json(), "notes": extra})
  return format_cell(c, table.notes, extra)


def table_n_at_k(workdirs: Sequence[Workdir], opts: Options) -> Table:
  """Table 1's shape: n@k per model before / after RL, a column per dataset/split."""
  metrics = [("mt_1atT", "MT 1@3", PAPER_TEMPERATURE["1@3"]),
             ("mt_10at100", "MT 10@100", PAPER_TEMPERATURE["10@100"]),
             ("st_10at100", "ST 10@100", PAPER_TEMPERATURE["10@100"])]
  standard = [r for w in workdirs for r in w.records if r.standard]
  columns = _columns(standard)
  t = Table("Table 1 shape: n@k (solve rate %, 95% interval, [problems × samples per problem])",
            ["model", "checkpoint", "n@k", *columns], [], Notes(), [])
  for w in workdirs:
    for phase, recs, step in model_phases([r for r in w.records if r.standard]):
      by_col = _group(recs, lambda r: r.column)
      for key, label, temp in metrics:
        row = [w.label, phase, label]
        for col in columns:
          rec = pick(by_col.get(col, []), key, opts, temp)
          row.append(_table_cell(t, rec, key, opts, {"model": w.label, "phase": phase}, col, step,
                                 temp))
        t.rows.append(row)
  return t


def table_st_vs_mt(workdirs: Sequence[Workdir], opts: Options) -> Table:
  """Table 2's shape: ST 1@3 and MT 1@3 per dataset/split, rows per model before / after RL."""
  standard = [r for w in workdirs for r in w.records if r.standard]
  columns = _columns(standard)
  temp = PAPER_TEMPERATURE["1@3"]
  t = Table("Table 2 shape: single-turn vs multi-turn 1@3", ["model", "checkpoint"] + [
      f"{c} {m}" for c in columns for m in ("ST", "MT")], [], Notes(), [])
  for w in workdirs:
    for phase, recs, step in model_phases([r for r in w.records if r.standard]):
      by_col = _group(recs, lambda r: r.column)
      row = [w.label, phase]
      for col in columns:
        for key in ("st_1at3", "mt_1atT"):
          rec = pick(by_col.get(col, []), key, opts, temp)
          row.append(_table_cell(t, rec, key, opts, {"model": w.label, "phase": phase}, col, step,
                                 temp))
      t.rows.append(row)
  return t


def setting_label(rec: Record) -> tuple[str, str, str]:
  turns = f"{rec.max_turns}{'?' if rec.max_turns_inferred else ''}"
  temp = "?" if rec.temperature is None else f"{rec.temperature:g}"
  return rec.feedback or "?", turns, temp


def table_ablations(workdirs: Sequence[Workdir], opts: Options) -> Table:
  """Table 3/6-style rows: MT 1@T per model, evaluation setting (feedback, turn limit, temperature)
  and phase, a column per dataset/split."""
  records = [r for w in workdirs for r in w.records]
  columns = _columns(records)
  t = Table("Tables 3 / 6 style: variants (MT 1@T by model and evaluation setting)",
            ["model", "checkpoint", "feedback", "turns", "temperature", *columns], [], Notes(), [])
  for w in workdirs:
    settings = _group(w.records, lambda r: r.setting)
    for setting in sorted(settings, key=lambda s: tuple(str(x) for x in s)):
      recs = settings[setting]
      for phase, prs, step in model_phases(recs):
        by_col = _group(prs, lambda r: r.column)
        row = [w.label, phase, *setting_label(prs[0])]
        for col in columns:
          rec = pick(by_col.get(col, []), "mt_1atT", opts)
          row.append(_table_cell(t, rec, "mt_1atT", opts,
                                 {"model": w.label, "phase": phase, "setting": list(setting)},
                                 col, step) if rec else "")
        t.rows.append(row)
  return t


ALL_METRICS = ("mt_1atT", "mt_pass10", "mt_10at100", "st_pass1", "st_1at3", "st_10at100")


def table_all(workdirs: Sequence[Workdir], opts: Options) -> Table:
  """Every evaluation record with every metric."""
  t = Table("All evaluations", ["model", "record", "checkpoint", "step", "dataset/split", "feedback",
                                "turns", "temperature",
                                *("MT 1@T" if k == "mt_1atT" else METRICS[k].label
                                  for k in ALL_METRICS)], [], Notes(), [])
  for w in workdirs:
    for rec in sorted(w.records, key=lambda r: (r.x_step is None, r.x_step or 0, r.name)):
      feedback, turns, temp = setting_label(rec)
      row = [w.label, rec.name, rec.checkpoint or "?", "?" if rec.step is None else str(rec.step),
             rec.column, feedback, turns, temp]
      for key in ALL_METRICS:
        row.append(_table_cell(t, rec, key, opts, {"model": w.label, "record_name": rec.name},
                               rec.column))
      t.rows.append(row)
  return t


# --------------------------------------------------------------------------------------------------
# Plots (Figure objects without pyplot: no global state, Agg canvas on save)

FEEDBACK_COLORS = {"true": "tab:blue", "random": "tab:red", "none": "tab:gray", "rich": "tab:green",
                   None: "tab:purple"}
CATEGORY_COLORS = {"passed": "tab:green", "wrong output": "tab:orange", "exception": "tab:red",
                   "timeout": "tab:purple", "out of memory": "tab:brown", "no code": "tab:gray",
                   "other": "tab:olive"}


def _new_figure(size: tuple[float, float]):
  """A Figure on its own Agg canvas (no pyplot: no global figure registry, no display backend)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=size, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _figure(panels: int, ncols: int, width: float = 5.0, height: float = 3.6):
  ncols = max(1, min(ncols, panels))
  nrows = max(1, -(-panels // ncols))
  fig = _new_figure((width * ncols, height * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[panels:]:
    ax.set_axis_off()
  return fig, list(axes[:panels])


def _dedupe_by(records: Iterable[Record], key: Callable[[Record], Any]) -> list[Record]:
  """One record per key: the one with the most samples (then the last name)."""
  best: dict[Any, Record] = {}
  for r in records:
    k = key(r)
    if k not in best or (r.sample_count, r.name) > (best[k].sample_count, best[k].name):
      best[k] = r
  return [best[k] for k in sorted(best, key=str)]


def plot_training(workdirs: Sequence[Workdir], opts: Options):
  """(a) MT 1@3 of the standard evaluations over training updates (bands: 95% intervals), and the
  training rounds' solve rate (`solve/private` of metrics.jsonl); one panel per workdir."""
  panels = []
  for w in workdirs:
    evals = [r for r in w.records if r.standard and r.x_step is not None
             and cell(r, "mt_1atT", opts).mean is not None]
    train = [(row["step"], float(row[TRAIN_SOLVE_KEY])) for row in w.metrics
             if isinstance(row.get(TRAIN_SOLVE_KEY), (int, float))]
    if evals or train:
      panels.append((w, evals, sorted(train)))
  if not panels:
    return None
  fig, axes = _figure(len(panels), 3)
  for ax, (w, evals, train) in zip(axes, panels):
    for col, recs in sorted(_group(evals, lambda r: r.column).items()):
      recs = sorted(_dedupe_by(recs, lambda r: r.x_step), key=lambda r: r.x_step)
      xs = [r.x_step for r in recs]
      cells = [cell(r, "mt_1atT", opts) for r in recs]
      line, = ax.plot(xs, [c.mean for c in cells], marker="o", label=f"eval MT 1@3 {col}")
      ax.fill_between(xs, [c.ci95[0] for c in cells], [c.ci95[1] for c in cells],
                      color=line.get_color(), alpha=0.2, linewidth=0)
    if train:
      ax.plot([s for s, _ in train], [v for _, v in train], color="black", alpha=0.6, linewidth=1,
              label=f"train {TRAIN_SOLVE_KEY}")
    ax.set_title(w.label)
    ax.set_xlabel("training updates")
    ax.set_ylabel("solve rate")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
  return fig


def plot_turn_limit(workdirs: Sequence[Workdir], opts: Options):
  """(b) MT pass@1 (= MT 1@T) and, with >= 10 rollouts, pass@10 against the turn limit T, from
  records that differ only in their recorded `max_turns`; one series per checkpoint and feedback
  kind (Fig. 4a: true vs random feedback)."""
  groups = _group([r for w in workdirs for r in w.records if not r.max_turns_inferred
                   and cell(r, "mt_1atT", opts).mean is not None],
                  lambda r: (r.model, r.column, r.checkpoint, r.step, r.feedback, r.temperature,
                             r.top_p))
  series = {k: _dedupe_by(v, lambda r: r.max_turns) for k, v in groups.items()}
  series = {k: sorted(v, key=lambda r: r.max_turns) for k, v in series.items() if len(v) >= 2}
  if not series:
    return None
  panels = _group(sorted(series, key=str), lambda k: (k[0], k[1]))
  fig, axes = _figure(len(panels), 2)
  for ax, ((model, column), keys) in zip(axes, panels.items()):
    for k in keys:
      recs = series[k]
      xs = [r.max_turns for r in recs]
      name = f"{k[2] or k[3] or '?'}, {k[4] or '?'} feedback"
      color = FEEDBACK_COLORS.get(k[4], "tab:purple")
      cells = [cell(r, "mt_1atT", opts) for r in recs]
      ax.plot(xs, [c.mean for c in cells], marker="o", color=color, label=f"{name}: pass@1")
      ax.fill_between(xs, [c.ci95[0] for c in cells], [c.ci95[1] for c in cells], color=color,
                      alpha=0.15, linewidth=0)
      p10 = [cell(r, "mt_pass10", opts) for r in recs]
      if all(c.mean is not None for c in p10):
        ax.plot(xs, [c.mean for c in p10], marker="s", linestyle="--", color=color,
                label=f"{name}: pass@10")
    ax.set_title(f"{model} {column}")
    ax.set_xlabel("turn limit")
    ax.set_ylabel("solve rate")
    ax.set_xticks(sorted({r.max_turns for k in keys for r in series[k]}))
    ax.legend(fontsize="small")
  return fig


def _budget_grid(limit: int, points: int = 24) -> list[int]:
  """About `points` budgets from 1 to `limit`, evenly spaced on a log scale."""
  if limit <= points:
    return list(range(1, limit + 1))
  return sorted({int(round(x)) for x in np.geomspace(1, limit, num=points)} | {limit})


def budget_curves(rec: Record) -> dict[str, tuple[list[int], list[float]]]:
  """n@k against the budget k of samples for n = 1 and 10 (k >= n), ST (k first responses) and MT
  (k turns = k // max_turns rollouts, at the budgets r · max_turns); mean over problems."""
  out = {}
  st = [p.samples for p in rec.samples.single_turn]
  if st:
    ks = _budget_grid(min(len(s) for s in st))
    for n in (1, 10):
      xs = [k for k in ks if k >= n]
      if xs:
        out[f"ST {n}@k"] = (xs, [float(np.mean(est.n_at_k_per_problem(st, n, k))) for k in xs])
  mt = [p.samples for p in rec.samples.multi_turn]
  if mt:
    t = rec.max_turns
    rs = _budget_grid(min(len(s) for s in mt))
    for n in (1, 10):
      xs = [r * t for r in rs if r * t >= n]
      if xs:
        out[f"MT {n}@k"] = (xs, [float(np.mean([est.mt_n_at_budget(s, n, x, t) for s in mt]))
                                 for x in xs])
  return out


def _phase_records(w: Workdir, require: Callable[[Record], bool]) -> list[tuple[str, Record]]:
  """(phase, record) per phase and column of a workdir's standard records that pass `require`."""
  out = []
  for phase, recs, _ in model_phases([r for r in w.records if r.standard and require(r)]):
    by_col = _group(recs, lambda r: r.column)
    for col in _columns(recs):
      out.append((f"{phase}, {col}", _dedupe_by(by_col[col], lambda r: 0)[0]))
  return out


def plot_sample_budget(workdirs: Sequence[Workdir], opts: Options):
  """(c) 1@k and 10@k against the sample budget k, ST vs MT (Fig. 4b), from the stored samples; one
  panel per workdir, phase and dataset/split."""
  del opts
  panels = [(w, label, rec) for w in workdirs
            for label, rec in _phase_records(w, lambda r: r.episodes is not None)]
  panels = [(w, label, rec, budget_curves(rec)) for w, label, rec in panels]
  panels = [p for p in panels if p[3]]
  if not panels:
    return None
  fig, axes = _figure(len(panels), 3)
  styles = {"ST": ("tab:orange", "o"), "MT": ("tab:blue", "s")}
  for ax, (w, label, rec, curves) in zip(axes, panels):
    for name, (xs, ys) in curves.items():
      color, marker = styles[name[:2]]
      ax.plot(xs, ys, color=color, marker=marker, markersize=3,
              linestyle="-" if name[3:].startswith("1@") else "--", label=name)
    ax.set_xscale("log")
    temp = "" if rec.temperature is None else f", temperature {rec.temperature:g}"
    ax.set_title(f"{w.label}: {label}{temp}", fontsize="medium")
    ax.set_xlabel("sample budget k (responses)")
    ax.set_ylabel("n@k")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
  return fig


def plot_errors(workdirs: Sequence[Workdir], opts: Options):
  """(d) Fig. 3 per turn, one row of three panels per workdir, phase and dataset/split: the share of
  responses per public-test verdict category (stacked), the share of responses repeating the previous
  turn's code exactly, and the mean edit distance 1 − chrF between consecutive programs."""
  del opts
  groups = []
  for w in workdirs:
    for label, rec in _phase_records(w, lambda r: any(
        e.get("turn_log") and e.get("mode", "multi_turn") == "multi_turn" for e in r.episodes or [])):
      groups.append((w, label, est.turn_error_stats(rec.episodes)))
  if not groups:
    return None
  fig = _new_figure((15, 3.6 * len(groups)))
  axes = fig.subplots(len(groups), 3, squeeze=False)
  for (ax_cat, ax_rep, ax_edit), (w, label, stats) in zip(axes, groups):
    turns = [s.turn for s in stats]
    bottom = np.zeros(len(stats))
    for cat in est.CATEGORIES:
      share = np.array([s.categories.get(cat, 0) / s.responses for s in stats])
      if share.any():
        ax_cat.bar(turns, share, bottom=bottom, color=CATEGORY_COLORS[cat], label=cat)
        bottom += share
    ax_cat.set_title(f"{w.label}: {label}\npublic-test verdicts", fontsize="medium")
    ax_cat.set_xlabel("turn")
    ax_cat.set_ylabel("share of responses")
    ax_cat.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    later = [s for s in stats if s.pairs]
    ax_rep.bar([s.turn for s in later], [s.repeats / s.pairs for s in later], color="tab:gray",
               label="same code as previous turn")
    ax_rep.set_title("exact repeats of the previous code", fontsize="medium")
    ax_rep.set_xlabel("turn")
    ax_rep.set_ylabel("share of responses")
    ax_rep.set_ylim(0, 1.02)
    ax_edit.bar([s.turn for s in later], [s.edit_distance for s in later], color="tab:blue",
                label="mean 1 − chrF")
    ax_edit.set_title("edit distance to the previous code", fontsize="medium")
    ax_edit.set_xlabel("turn")
    ax_edit.set_ylabel("1 − chrF")
    ax_edit.set_ylim(0, 1.02)
    for ax in (ax_cat, ax_rep, ax_edit):
      ax.set_xticks(turns)
      ax.set_xlim(0.5, max(turns) + 0.5)
    if not later:
      for ax in (ax_rep, ax_edit):
        ax.text(0.5, 0.5, "no consecutive turns with code", ha="center", va="center",
                transform=ax.transAxes, color="gray")
  return fig


PLOTS = {"training": plot_training, "turn_limit": plot_turn_limit,
         "sample_budget": plot_sample_budget, "errors": plot_errors}


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
