"""Shared code of the ablation notebooks in this folder (feedback, single_vs_multi_turn, turn_budgets,
kl_coef): configs of the tiny synthetic setting, cached training runs, evaluation sweeps and the report.

Everything runs through the project's own commands, in subprocesses of the notebook's Python:
`python -m rlef_jax.warmstart`, `python -m rlef_jax.train`, `python -m rlef_jax.evaluate` (their
command lines are printed), and `rlef_jax.report` (in process) for the tables and plots.

* Runs are cached: a run's workdir is named by its overrides of configs/tiny.py, seed and a hash of
  its whole resolved config under `RUNS/{quick,full}/`, where RUNS is `$RLEF_NOTEBOOK_RUNS` or `runs/notebooks` of the
  repository. A finished run (marker `notebook_run.json`) is loaded, not trained again, so the
  notebooks share the runs they have in common (the plain tiny run is the RLEF arm of all four); an
  unfinished one resumes from its last checkpoint.
* All arms of a seed start RL from one warm-started model (the supervised warm start of
  configs/tiny.py, made once per seed by `rlef_jax.warmstart` and copied into each arm's workdir), as
  the paper's arms all start from the same Instruct model. Arms that change the model, tokenizer, data
  or warm start itself make their own.
* QUICK mode (`RLEF_NOTEBOOK_QUICK=1`, or `QUICK = True` in a notebook) shrinks every run to a
  smoke test of the whole pipeline (3 updates of 8 rollouts, 2 warm-start steps, 8 evaluation
  problems): its numbers are not results. Full mode is configs/tiny.py unchanged.
* Compiled XLA programs are kept in `RUNS/jax_cache` (JAX's persistent compilation cache) unless
  `JAX_COMPILATION_CACHE_DIR` is set, so later runs skip most compilation.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO_ROOT / "configs" / "tiny.py"
QUICK_ENV = "RLEF_NOTEBOOK_QUICK"
RUNS_ENV = "RLEF_NOTEBOOK_RUNS"
RUN_MARKER = "notebook_run.json"
EVALS_MARKER = "notebook_evals.json"
REFERENCE_DIR = "reference_params"  # rlef_jax.warmstart.REFERENCE_DIR
if str(REPO_ROOT) not in sys.path:  # rlef_jax from this checkout, also when it is not installed
  sys.path.insert(0, str(REPO_ROOT))

# QUICK: every stage of the pipeline, in ~30 s per run once compiled (the numbers mean nothing).
QUICK_OVERRIDES: dict[str, Any] = {
    "warmstart.steps": 2, "warmstart.batch_size": 8, "warmstart.num_dialogues": 32,
    "rl.rollouts_per_round": 8, "rl.minibatch_size": 8, "rl.updates_per_round": 1,
    "rl.score_batch_size": 8, "rl.num_microbatches": -1, "optim.warmup_steps": 1,
    "train.num_updates": 3, "train.eval_every": 0, "train.checkpoint_every": 3, "train.log_every": 1,
    "eval.max_problems": 8, "eval.num_rollouts_per_problem": 1, "eval.bootstrap_resamples": 50,
}
QUICK_SEEDS = (0,)
FULL_SEEDS = (0, 1, 2)  # BUILD_NOTES "The tiny run": the gain differs a lot between seeds
# Overrides under these prefixes change what the warm start computes: such arms warm-start themselves.
_OWN_WARM_START = ("model.", "tokenizer.", "data.", "warmstart.", "train.seed",
                   "sampling.max_context_length")
# Lines of the commands' output shown in the notebook (the full log is in WORKDIR/<command>.log).
_SHOWN = re.compile(r"^(\[|step \d|Traceback|\w*Error)")


def quick_mode(default: bool) -> bool:
  """`default` unless `$RLEF_NOTEBOOK_QUICK` says otherwise (1/true/yes or 0/false/no)."""
  value = os.environ.get(QUICK_ENV, "").strip().lower()
  if value in ("1", "true", "yes"):
    return True
  if value in ("0", "false", "no"):
    return False
  if value:
    raise ValueError(f"${QUICK_ENV}={value!r}: use 1 or 0")
  return default


def load_tiny_config():
  """configs/tiny.py's `get_config()`."""
  spec = importlib.util.spec_from_file_location("rlef_tiny_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def make_config(overrides: Mapping[str, Any]):
  """configs/tiny.py with `overrides` ({"group.field": value}) applied, validated."""
  from rlef_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = load_tiny_config()
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  config_lib.validate(config)
  return config


def _flag_value(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  return str(value)


def config_flags(overrides: Mapping[str, Any]) -> list[str]:
  """The command-line flags that apply `overrides` to configs/tiny.py."""
  return [f"--config={CONFIG_FILE.relative_to(REPO_ROOT)}"] + [
      f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]


def _fingerprint(config) -> str:
  """A hash of the resolved config. Paths inside the checkout (configs/tiny.py's tokenizer, shipped in
  the package) count relative to it, so a run has the same name in every clone: a study's kept runs
  are found again on another machine or in another directory. A field added to the config after
  runs were kept (`rlef_jax.config.FIELDS_ADDED_LATER`) is left out while it holds the value that
  computes what the code did before it existed, so those runs keep their names."""
  from rlef_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = copy.deepcopy(config)
  with config.unlocked():
    for key, before in config_lib.FIELDS_ADDED_LATER.items():
      group, field = key.split(".")
      if field in config[group] and config[group][field] == before:
        del config[group][field]
  text = config.to_json(sort_keys=True).replace(str(REPO_ROOT), "<checkout>")
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "run"


@dataclasses.dataclass
class Run:
  """A finished training run: its workdir, arm label, seed and config overrides."""
  label: str
  seed: int
  workdir: pathlib.Path
  overrides: dict[str, Any]  # all of them, QUICK's included
  wall_s: float | None = None  # training wall time when this session trained it, else as recorded

  @property
  def name(self) -> str:
    return f"{self.label} s{self.seed}"

  def metrics(self) -> list[dict[str, Any]]:
    """The training rounds' scalars (WORKDIR/metrics.jsonl), one dict per logged update."""
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

  def training_records(self) -> list[str]:
    """The evaluations training wrote: step_0 (before RL), step_N, step_N_final (after)."""
    return sorted((p.stem for p in (self.workdir / "eval").glob("step_*.json")),
                  key=lambda n: int(re.match(r"step_(\d+)", n).group(1)))


class Session:
  """The runs of one notebook: `train` arms, `evaluate` checkpoints, `report` them."""

  def __init__(self, notebook: str, quick: bool, runs_root: str | os.PathLike | None = None,
               seeds: Sequence[int] | None = None):
    self.notebook = notebook
    self.quick = quick
    root = runs_root or os.environ.get(RUNS_ENV) or REPO_ROOT / "runs" / "notebooks"
    self.root = pathlib.Path(root).resolve() / ("quick" if quick else "full")
    self.seeds = tuple(seeds if seeds is not None else (QUICK_SEEDS if quick else FULL_SEEDS))
    self.root.mkdir(parents=True, exist_ok=True)
    print(f"[{notebook}] {'QUICK (smoke test, numbers are not results)' if quick else 'FULL'} mode; "
          f"seeds {list(self.seeds)}; runs under {self.root}")

  # ------------------------------------------------------------------------------------------------
  # Commands

  def _env(self) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(self.root.parent / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env

  def command(self, module: str, args: Sequence[str], log: pathlib.Path) -> float:
    """Runs `python -m module args` from the repository root; shows its progress lines, keeps the
    whole output in `log`; raises with the output's tail when it fails. Returns the wall time."""
    cmd = [sys.executable, "-m", module, *args]
    print("$ python -m " + " ".join([module, *args]), flush=True)
    start = time.perf_counter()
    tail: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True, errors="replace") as proc:
      try:
        for line in proc.stdout:
          f.write(line)
          line = line.rstrip().split("\r")[-1]
          tail = (tail + [line])[-40:]
          if _SHOWN.match(line):
            print("  " + line, flush=True)
      except BaseException:  # e.g. the notebook's interrupt: stop the command too
        # SIGTERM: the trainer finishes its round and writes a checkpoint; rerunning the cell resumes.
        print(f"  interrupted: stopping {module} (SIGTERM) ...", flush=True)
        proc.terminate()
        raise
    seconds = time.perf_counter() - start
    if proc.returncode:
      raise RuntimeError(f"python -m {module} failed (exit {proc.returncode}); full log {log}; "
                         "last lines:\n" + "\n".join(tail))
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds

  # ------------------------------------------------------------------------------------------------
  # Training

  def overrides(self, overrides: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """QUICK's overrides (in QUICK mode), then the seed, then `overrides`."""
    merged = dict(QUICK_OVERRIDES) if self.quick else {}
    if seed:
      merged["train.seed"] = seed
    merged.update(overrides or {})
    return merged

  def warm_start(self, seed: int = 0) -> pathlib.Path:
    """The warm-started initial policy of `seed` (WORKDIR/reference_params), made once."""
    overrides = self.overrides(seed=seed)
    workdir = self.root / f"warmstart-s{seed}-{_fingerprint(make_config(overrides))}"
    if not (workdir / REFERENCE_DIR).exists():
      print(f"[warm start] seed {seed} -> {workdir}")
      self.command("rlef_jax.warmstart", [*config_flags(overrides), f"--workdir={workdir}"],
                   workdir / "warmstart.log")
    return workdir / REFERENCE_DIR

  def train(self, label: str, overrides: Mapping[str, Any] | None = None, seed: int = 0) -> Run:
    """Trains arm `label` (configs/tiny.py + QUICK + `overrides`) with `seed`, or loads it when a
    finished run of the same config exists; resumes an unfinished one."""
    ablation = dict(overrides or {})
    merged = self.overrides(ablation, seed)
    config = make_config(merged)
    tiny = load_tiny_config()
    changed = [f"{k}={v}" for k, v in ablation.items() if tiny[k.split(".")[0]][k.split(".")[1]] != v]
    # Named by what differs from configs/tiny.py, not by the label: notebooks share equal runs.
    workdir = self.root / f"{_slug('_'.join(changed) or 'tiny')}-s{seed}-{_fingerprint(config)}"
    marker = workdir / RUN_MARKER
    if marker.exists():
      info = json.loads(marker.read_text())
      print(f"[train] {label}, seed {seed}: loaded the finished run {workdir} "
            f"(trained in {info.get('wall_s', 0):.0f} s)")
      return Run(label, seed, workdir, merged, info.get("wall_s"))
    workdir.mkdir(parents=True, exist_ok=True)
    shared = not any(k.startswith(_OWN_WARM_START) for k in ablation)
    if shared and config.warmstart.enabled and not (workdir / REFERENCE_DIR).exists():
      shutil.copytree(self.warm_start(seed), workdir / REFERENCE_DIR)
    print(f"[train] {label}, seed {seed} -> {workdir}")
    seconds = self.command("rlef_jax.train", [*config_flags(merged), f"--workdir={workdir}"],
                           workdir / "train.log")
    marker.write_text(json.dumps({"label": label, "seed": seed, "overrides": merged,
                                  "wall_s": seconds, "config": json.loads(config.to_json())},
                                 indent=1))
    return Run(label, seed, workdir, merged, seconds)

  def train_seeds(self, label: str, overrides: Mapping[str, Any] | None = None) -> list[Run]:
    return [self.train(label, overrides, seed) for seed in self.seeds]

  # ------------------------------------------------------------------------------------------------
  # Evaluation

  def evaluate(self, run: Run, feedback: Sequence[str] = ("true",), max_turns: Sequence[int] = (3,),
               checkpoint: str | None = None, split: str | None = None) -> list[str]:
    """Evaluates a checkpoint of `run` (default: its last; "reference" = the warm-started model
    before RL) under each feedback variant x turn budget, with one `python -m rlef_jax.evaluate`;
    returns the names of the records it wrote in WORKDIR/eval (cached per request)."""
    key = json.dumps({"feedback": list(feedback), "max_turns": [int(t) for t in max_turns],
                      "checkpoint": checkpoint, "split": split}, sort_keys=True)
    marker = run.workdir / EVALS_MARKER
    done = json.loads(marker.read_text()) if marker.exists() else {}
    if key in done:
      print(f"[evaluate] {run.name}: loaded {', '.join(done[key]['records'])}")
      return done[key]["records"]
    eval_dir = run.workdir / "eval"
    before = {p.name: p.stat().st_mtime_ns for p in eval_dir.glob("*.json")}
    args = [*config_flags(run.overrides), f"--workdir={run.workdir}",
            "--feedback=" + ",".join(feedback), "--max_turns=" + ",".join(map(str, max_turns))]
    if checkpoint:
      args.append(f"--checkpoint={checkpoint}")
    if split:
      args.append(f"--split={split}")
    print(f"[evaluate] {run.name}: checkpoint {checkpoint or 'last'}, feedback {list(feedback)}, "
          f"turn limits {list(max_turns)}")
    seconds = self.command("rlef_jax.evaluate", args, run.workdir / "evaluate.log")
    records = sorted(p.stem for p in eval_dir.glob("*.json")
                     if before.get(p.name) != p.stat().st_mtime_ns)
    done[key] = {"records": records, "wall_s": seconds}
    marker.write_text(json.dumps(done, indent=1))
    return records

  # ------------------------------------------------------------------------------------------------
  # Report

  def report(self, entries: Iterable[tuple[Run, Sequence[str] | None]], name: str = "report",
             show: bool = True) -> "Report":
    """`python -m rlef_jax.report` over the chosen records of each run (None: the evaluations that
    training wrote). Each run is a model of the report, labelled "<arm> s<seed>"."""
    from rlef_jax import report as report_lib  # pylint: disable=g-import-not-at-top
    from rlef_jax import report_records  # pylint: disable=g-import-not-at-top
    out = self.root / "reports" / self.notebook / _slug(name)
    views = out / "runs"
    shutil.rmtree(views, ignore_errors=True)
    workdirs = []
    for run, records in entries:
      view = views / _slug(run.name)
      (view / "eval").mkdir(parents=True)
      for record in (run.training_records() if records is None else records):
        summary = run.workdir / "eval" / f"{record}.json"
        episodes = report_records.episodes_file(str(summary))  # plain or gzipped (a kept run)
        for src in [summary] + ([pathlib.Path(episodes)] if episodes else []):
          if src.exists():
            shutil.copyfile(src, view / "eval" / src.name)
      if (run.workdir / "metrics.jsonl").exists():
        shutil.copyfile(run.workdir / "metrics.jsonl", view / "metrics.jsonl")
      workdirs.append(report_lib.load_workdir(str(view), run.name))
    resamples = QUICK_OVERRIDES["eval.bootstrap_resamples"] if self.quick else 200
    data = report_lib.write_report(workdirs, str(out), report_lib.Options(resamples=resamples))
    result = Report(out, data)
    if show:
      result.show()
    return result


# --------------------------------------------------------------------------------------------------
# Showing results in a notebook

SUMMARY_METRICS = (("mt_1atT", "MT 1@T"), ("st_pass1", "ST pass@1"), ("st_1at3", "ST 1@3"))


def _fmt(cell: Mapping[str, Any] | None) -> str:
  if not cell or cell.get("mean") is None:
    return "—"
  text = f"{100 * cell['mean']:.1f}"
  if cell.get("ci95"):
    text += f" ({100 * cell['ci95'][0]:.1f}–{100 * cell['ci95'][1]:.1f})"
  return text


@dataclasses.dataclass
class Report:
  """The written report (DIR/report.md, report.json, PNG plots) and its data."""
  out: pathlib.Path
  data: dict[str, Any]

  @property
  def plots(self) -> list[pathlib.Path]:
    return [self.out / f for f in self.data["plots"].values() if f]

  def summary_rows(self) -> list[dict[str, Any]]:
    """One row per record: model, record, checkpoint, feedback, turn limit and the summary metrics."""
    return [{"model": r["model"], "record": r["name"], "checkpoint": r["checkpoint"],
             "step": r["step"], "feedback": r["feedback"], "max_turns": r["max_turns"],
             **{key: r["metrics"].get(key) for key, _ in SUMMARY_METRICS}}
            for r in self.data["records"]]

  def summary_markdown(self) -> str:
    """A compact table: every record with MT 1@T, ST pass@1, ST 1@3 (%, 95% interval)."""
    lines = ["| model | checkpoint | feedback | turn limit | " +
             " | ".join(label for _, label in SUMMARY_METRICS) + " |",
             "|---|---|---|---|" + "---|" * len(SUMMARY_METRICS)]
    for row in self.summary_rows():
      lines.append(f"| {row['model']} | {row['checkpoint'] or row['record']} | {row['feedback'] or '?'}"
                   f" | {row['max_turns']} | " +
                   " | ".join(_fmt(row[key]) for key, _ in SUMMARY_METRICS) + " |")
    return "\n".join(lines)

  def markdown(self) -> str:
    """report.md without its list of plot files (the plots are shown as images instead)."""
    text = (self.out / "report.md").read_text()
    return text.split("\n## Plots", 1)[0]

  def show(self, full: bool = True) -> None:
    """Displays the compact table, then report.md (if `full`) and every plot, inline."""
    from IPython.display import Image, Markdown, display  # pylint: disable=g-import-not-at-top
    display(Markdown("### Summary (solve rates in %, 95% interval)\n\n" + self.summary_markdown()))
    if full:
      display(Markdown(self.markdown()))
    for path in self.plots:
      display(Markdown(f"**{path.name}**"))
      display(Image(filename=str(path)))
    print(f"[report] {self.out / 'report.md'}")


def show_figure(fig) -> None:
  """Displays a matplotlib Figure inline as a PNG (works with any matplotlib backend)."""
  from IPython.display import Image, display  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  display(Image(data=buf.getvalue()))


def plot_curves(runs: Sequence[Run], keys: Sequence[str], group_by=lambda run: run.label,
                smooth: int = 10, title: str = ""):
  """A Figure with one panel per metrics.jsonl key against training updates: one colour per group
  of runs (default: arm), thin lines per seed, a thick line for the mean over seeds smoothed over
  `smooth` updates (a trailing mean)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5.2 * len(keys), 3.8), layout="constrained")
  axes = fig.subplots(1, len(keys), squeeze=False)[0]
  groups: dict[str, list[Run]] = {}
  for run in runs:
    groups.setdefault(str(group_by(run)), []).append(run)
  colors = [f"C{i}" for i in range(10)]
  for ax, key in zip(axes, keys):
    for color, (group, members) in zip(colors * 10, groups.items()):
      series = []
      for run in members:
        rows = [(m["step"], m[key]) for m in run.metrics() if isinstance(m.get(key), (int, float))]
        if rows:
          steps, values = map(np.asarray, zip(*rows))
          ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
          series.append((steps, values))
      if not series:
        continue
      n = min(len(s) for s, _ in series)
      steps, mean = series[0][0][:n], np.mean([v[:n] for _, v in series], axis=0)
      w = max(1, min(smooth, n))
      smoothed = np.array([mean[max(0, i - w + 1):i + 1].mean() for i in range(n)])
      ax.plot(steps, smoothed, color=color, linewidth=2,
              label=f"{group} (mean of {len(series)} seed{'s' if len(series) > 1 else ''})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if key.startswith(("solve/", "episode/valid")):
      ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training updates")
    ax.set_ylabel(key)
    ax.set_title(key)
    ax.legend(fontsize="small")
  if title:
    fig.suptitle(title)
  return fig


def seed_table(report: Report, runs: Sequence[Run], metric: str = "mt_1atT",
               record_filter=None) -> str:
  """Markdown: per arm (run label) and evaluation setting, the metric of each seed and its mean over
  seeds. `record_filter(row)` picks the records (default: after RL, i.e. step > 0)."""
  keep = record_filter or (lambda row: (row["step"] or 0) > 0)
  group = {run.name: run.label for run in runs}
  arms = list(dict.fromkeys(run.label for run in runs))
  cells: dict[tuple[str, str, int], dict[str, float]] = {}
  for row in report.summary_rows():
    if not keep(row) or row["model"] not in group or not row[metric] or row[metric]["mean"] is None:
      continue
    k = (group[row["model"]], row["feedback"] or "?", row["max_turns"])
    cells.setdefault(k, {})[row["model"]] = row[metric]["mean"]  # one record per run and setting
  label = dict(SUMMARY_METRICS)[metric]
  lines = [f"| arm | feedback | turn limit | {label} per seed | mean |", "|---|---|---|---|---|"]
  order = {f: i for i, f in enumerate(("true", "random", "none", "rich"))}
  for (arm, feedback, turns), by_run in sorted(
      cells.items(), key=lambda kv: (arms.index(kv[0][0]), order.get(kv[0][1], 9), kv[0][2])):
    values = list(by_run.values())
    lines.append(f"| {arm} | {feedback} | {turns} | " + ", ".join(f"{100 * v:.1f}" for v in values)
                 + f" | **{100 * sum(values) / len(values):.1f}** |")
  return "\n".join(lines)


def show_markdown(text: str) -> None:
  from IPython.display import Markdown, display  # pylint: disable=g-import-not-at-top
  display(Markdown(text))
