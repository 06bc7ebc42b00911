"""The report's plots (`rlef_jax.report`): training curves, MT pass@k against the turn limit (Fig. 4a),
1@k / 10@k against the sample budget (Fig. 4b) and the per-turn error categories (Fig. 3), as
matplotlib Figure objects without pyplot (no global state; Agg)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from rlef_jax import estimators as est
from rlef_jax.report_records import TRAIN_SOLVE_KEY, Options, Record, Workdir
from rlef_jax.report_tables import cell, group_by, model_phases, record_columns

PLOT_FILES = {"training": "training.png", "turn_limit": "turn_limit.png",
              "sample_budget": "sample_budget.png", "errors": "errors.png"}


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


def _rate_axes(ax, title: str, xlabel: str, ylabel: str, **title_kw) -> None:
  """Title, axis labels, a 0-1 rate axis and the legend of one panel."""
  ax.set_title(title, **title_kw)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize="small")


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
    for col, recs in sorted(group_by(evals, lambda r: r.column).items()):
      recs = sorted(_dedupe_by(recs, lambda r: r.x_step), key=lambda r: r.x_step)
      xs = [r.x_step for r in recs]
      cells = [cell(r, "mt_1atT", opts) for r in recs]
      line, = ax.plot(xs, [c.mean for c in cells], marker="o", label=f"eval MT 1@3 {col}")
      ax.fill_between(xs, [c.ci95[0] for c in cells], [c.ci95[1] for c in cells],
                      color=line.get_color(), alpha=0.2, linewidth=0)
    if train:
      ax.plot([s for s, _ in train], [v for _, v in train], color="black", alpha=0.6, linewidth=1,
              label=f"train {TRAIN_SOLVE_KEY}")
    _rate_axes(ax, w.label, "training updates", "solve rate")
  return fig


def plot_turn_limit(workdirs: Sequence[Workdir], opts: Options):
  """(b) MT pass@1 (= MT 1@T) and, with >= 10 rollouts, pass@10 against the turn limit T, from
  records that differ only in their recorded `max_turns`; one series per checkpoint and feedback
  kind (Fig. 4a: true vs random feedback)."""
  groups = group_by([r for w in workdirs for r in w.records if not r.max_turns_inferred
                   and cell(r, "mt_1atT", opts).mean is not None],
                  lambda r: (r.model, r.column, r.checkpoint, r.step, r.feedback, r.temperature,
                             r.top_p))
  series = {k: _dedupe_by(v, lambda r: r.max_turns) for k, v in groups.items()}
  series = {k: sorted(v, key=lambda r: r.max_turns) for k, v in series.items() if len(v) >= 2}
  if not series:
    return None
  panels = group_by(sorted(series, key=str), lambda k: (k[0], k[1]))
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
    by_col = group_by(recs, lambda r: r.column)
    for col in record_columns(recs):
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
    _rate_axes(ax, f"{w.label}: {label}{temp}", "sample budget k (responses)", "n@k", fontsize="medium")
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
