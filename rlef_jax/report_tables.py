"""The report's cells and tables (`rlef_jax.report`): one metric of one record with its bootstrap
interval (`cell`), the record behind a table cell (`pick`, `model_phases`), and the paper-shaped
tables (n@k, ST vs MT, ablation settings, every evaluation) as markdown."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

from rlef_jax import estimators as est
from rlef_jax.report_records import (PAPER_TEMPERATURE, SUMMARY_METRICS, Options, Record,
                                     Workdir)

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


def group_by(items: Iterable[Any], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
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
    chosen = [r for rs in group_by(stepped, lambda r: r.column).values()
              for r in rs if r.step == max(x.step for x in rs)]
    out.append((f"after RL (step {last})", chosen, last))
  others = [r for r in records if not r.is_before and r.step is None]
  for ckpt, rs in sorted(group_by(others, lambda r: r.checkpoint or r.name).items()):
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


def record_columns(records: Iterable[Record]) -> list[str]:
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
  columns = record_columns(standard)
  t = Table("Table 1 shape: n@k (solve rate %, 95% interval, [problems × samples per problem])",
            ["model", "checkpoint", "n@k", *columns], [], Notes(), [])
  for w in workdirs:
    for phase, recs, step in model_phases([r for r in w.records if r.standard]):
      by_col = group_by(recs, lambda r: r.column)
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
  columns = record_columns(standard)
  temp = PAPER_TEMPERATURE["1@3"]
  t = Table("Table 2 shape: single-turn vs multi-turn 1@3", ["model", "checkpoint"] + [
      f"{c} {m}" for c in columns for m in ("ST", "MT")], [], Notes(), [])
  for w in workdirs:
    for phase, recs, step in model_phases([r for r in w.records if r.standard]):
      by_col = group_by(recs, lambda r: r.column)
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
  columns = record_columns(records)
  t = Table("Tables 3 / 6 style: variants (MT 1@T by model and evaluation setting)",
            ["model", "checkpoint", "feedback", "turns", "temperature", *columns], [], Notes(), [])
  for w in workdirs:
    settings = group_by(w.records, lambda r: r.setting)
    for setting in sorted(settings, key=lambda s: tuple(str(x) for x in s)):
      recs = settings[setting]
      for phase, prs, step in model_phases(recs):
        by_col = group_by(prs, lambda r: r.column)
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
