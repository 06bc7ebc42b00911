"""Evaluation records for the report (`rlef_jax.report`): the summaries and episodes under
`WORKDIR/eval/`, their metadata (from the summary, else from the record's name), the training
metrics, and the report's options. Bad input raises `ReportError` with one line naming the file."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Any, Sequence

from rlef_jax import estimators as est

EVAL_DIR = "eval"  # rlef_jax.evaluate.EVAL_DIR (not imported: evaluate pulls in jax)
METRICS_FILE = "metrics.jsonl"  # rlef_jax.metrics.JSONL_NAME
TRAIN_SOLVE_KEY = "solve/private"
PAPER_TEMPERATURE = {"1@3": 0.2, "10@100": 1.0}  # paper §3.1
BEFORE_CHECKPOINTS = ("reference", "warmstart", "step_0")


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
  cells: dict[Any, Any] = dataclasses.field(default_factory=dict)  # report_tables.cell's cache

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


def episodes_file(summary_path: str) -> str | None:
  """The episodes of summary `NAME.json`: `NAME.episodes.jsonl`, else `NAME.episodes.jsonl.gz` (an
  archived record), else None."""
  stem = summary_path[:-len(".json")] + ".episodes.jsonl"
  return next((p for p in (stem, stem + ".gz") if os.path.exists(p)), None)


def load_record(path: str, model: str) -> Record:
  """A summary file and its episodes (`NAME.episodes.jsonl` or `.jsonl.gz` next to it, optional)."""
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
  episodes_path = episodes_file(path)
  episodes = None
  if episodes_path is not None:
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
