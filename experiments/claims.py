"""The paper's qualitative claims, each tested by its ablation on the tiny synthetic setting over seeds.

  python experiments/claims.py --out runs/claims            # the study: every arm x seed (hours on 2 CPUs)
  python experiments/claims.py --out runs/claims --keep docs/reports/claims   # ... continuing the kept copy
  python experiments/claims.py --out runs/claims --quick    # a smoke test of the same (numbers mean nothing)
  python experiments/claims.py --out runs/claims --seeds=0,1,2,3 --kl=0.05,0.2,1.0
  python experiments/claims.py --out runs/claims --arms=token --kl=   # a part: RLEF and one ablation arm

One command trains every arm for every seed, evaluates what each claim needs, writes the report of
`python -m rlef_jax.report` (tables and plots) over all of it, and then `claims.md` / `claims.json`: per
claim the figures per seed with their 95% intervals, each seed's difference with its ~95% band
(`combine`), the mean over seeds and a verdict computed from those figures ("confirmed", "reversed"
or "not confirmed"; rules in `verdict`), with the number of seeds whose difference clears its band.

It is resumable: runs and evaluations are cached by their resolved config under `--out` (finished ones
are loaded, an interrupted training resumes from its last checkpoint), so rerunning the command after a
stop or a crash redoes only what is missing. It goes seed by seed (RLEF and its evaluation sweeps, then
the other arms). `--keep DIR` also keeps a light copy of each finished run in DIR (markers, metrics,
evaluation summaries, gzipped episodes; no checkpoints: ~0.5 MB a run) and restores from it what
`--out` lacks, so a study continues on a machine that lost `--out`: the repository keeps the tiny
study's copy in docs/reports/claims (rerun with `--keep docs/reports/claims` to continue or rebuild it). It runs the project's own commands in subprocesses
(`experiments/notebooks/ablations.py`, shared with the ablation notebooks), on whatever devices JAX
finds: on a GPU host the same command runs the study there.

| claim (paper) | arms and evaluations |
|---|---|
| 1 RLEF raises MT 1@3 (Tables 1-2) | RLEF: before vs after RL |
| 2 after RLEF, MT 1@3 > ST 1@3 (Tables 2, 4) | RLEF after RL: both from the final evaluation |
| 3 the gain comes from using the feedback (Fig. 3, 4a) | RLEF before/after: true vs random feedback, turn limits 1, 2, 3, 5 |
| 4 RL without feedback gains less (Table 6b) | arm env.feedback = "none" vs RLEF: MT 1@3 gain |
| 5 single-turn RL: ST up, MT less than RLEF (Tables 4, 6b) | arm env.max_turns = 1 vs RLEF |
| 6 more turns help the RLEF model more (Fig. 4b) | RLEF before/after: MT 1@T gain from T = 1 to 5 |
| 7 turn-level value beats token-level (Table 6b) | arm rl.value_level = "token" vs RLEF: MT 1@3 after RL |
| β the paper's KL coefficient 0.05 | arms rl.kl_coef in --kl: MT 1@3 after RL and the KL reached |
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "notebooks"))
import ablations  # noqa: E402  (experiments/notebooks/ablations.py; puts the checkout on sys.path)
from rlef_jax.report_records import BEFORE_CHECKPOINTS  # noqa: E402

RLEF = "RLEF"
BLIND = "RL without feedback"
SINGLE = "single-turn RL"
TOKEN_VALUE = "token-level value"
# The training ablations beside RLEF (always trained) and the β sweep (--kl): --arms names.
ABLATION_ARMS = {"blind": (BLIND, {"env.feedback": "none"}), "single": (SINGLE, {"env.max_turns": 1}),
                 "token": (TOKEN_VALUE, {"rl.value_level": "token"})}
TURN_LIMITS = (1, 2, 3, 5)
QUICK_TURN_LIMITS = (1, 3)


def kl_label(beta: float) -> str:
  return f"RLEF kl_coef={beta:g}"


# --------------------------------------------------------------------------------------------------
# Reading the report's records


def _value(cell: Mapping[str, Any] | None) -> float | None:
  if not cell or cell.get("mean") is None or (isinstance(cell["mean"], float) and math.isnan(cell["mean"])):
    return None
  return float(cell["mean"])


def pick(rows: Sequence[Mapping[str, Any]], model: str, metric: str, *, before: bool,
         feedback: str = "true", max_turns: int = 3) -> Mapping[str, Any] | None:
  """The metric cell (`{"mean", "ci95"}`) of `model`'s record in that setting: before RL (step 0)
  or after (the largest step); None when the study has no such record."""
  is_before = lambda r: r["checkpoint"] in BEFORE_CHECKPOINTS or r["step"] == 0
  matches = [r for r in rows if r["model"] == model and (r["feedback"] or "true") == feedback
             and r["max_turns"] == max_turns and _value(r.get(metric)) is not None
             and (is_before(r) if before else not is_before(r) and (r["step"] or 0) > 0)]
  if not matches:
    return None
  return max(matches, key=lambda r: r["step"] or 0)[metric]


def verdict(differences: Sequence[float | None], expected_sign: int = 1) -> str:
  """"confirmed" when the difference has the claimed sign on every seed, "reversed" when it has the
  opposite sign on every seed, else "not confirmed" (mixed, zero, or missing figures)."""
  values = [d for d in differences if d is not None]
  if not values or len(values) < len(differences):
    return "not confirmed (missing figures)"
  if all(expected_sign * d > 0 for d in values):
    return "confirmed"
  if all(expected_sign * d < 0 for d in values):
    return "reversed"
  return "not confirmed"


def _fmt(cell: Mapping[str, Any] | None) -> str:
  v = _value(cell)
  if v is None:
    return "—"
  text = f"{100 * v:.1f}"
  if cell.get("ci95"):
    text += f" [{100 * cell['ci95'][0]:.1f}, {100 * cell['ci95'][1]:.1f}]"
  return text


def _diff(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> float | None:
  va, vb = _value(a), _value(b)
  return None if va is None or vb is None else va - vb


Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def combine(*terms: tuple[int, Mapping[str, Any] | None]) -> tuple[float | None, float | None]:
  """(sum of sign * value, half-width of its ~95% band) over `(sign, cell)` terms. Each cell's
  standard error is read off its bootstrap interval (width / 2 z); the band adds them in quadrature as
  if the estimates were independent. They are evaluations of the same problems, so positively
  correlated, which makes the true noise of a difference smaller: the band errs wide (conservative)."""
  values = [_value(cell) for _, cell in terms]
  if None in values:
    return None, None
  total = sum(sign * v for (sign, _), v in zip(terms, values))
  intervals = [cell.get("ci95") for _, cell in terms]
  if any(not ci for ci in intervals):
    return total, None
  return total, Z95 * math.sqrt(sum(((hi - lo) / (2 * Z95)) ** 2 for lo, hi in intervals))


def _band(value: float | None, half_width: float | None) -> str:
  if value is None or half_width is None:
    return _pp(value)
  return f"{_pp(value)} ± {100 * half_width:.1f}"


def _mean(values: Sequence[float | None]) -> float | None:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def _pp(x: float | None) -> str:
  return "—" if x is None else f"{100 * x:+.1f}"


class Claim:
  """One claim: a table of per-seed figures (rows), the per-seed differences and the verdict."""

  def __init__(self, number: str, text: str):
    self.number, self.text = number, text
    self.header: list[str] = []
    self.rows: list[list[str]] = []
    self.differences: list[float | None] = []
    self.bands: list[float | None] = []  # half-widths of the differences' ~95% bands (`combine`)
    self.verdict = "not run"
    self.note = ""

  def add(self, difference: tuple[float | None, float | None]) -> str:
    """Records one seed's (difference, band half-width) from `combine`; returns it as table text."""
    self.differences.append(difference[0])
    self.bands.append(difference[1])
    return _band(*difference)

  def outside_noise(self, sign: int | None = None) -> int:
    """Seeds whose difference lies outside its band on one side: `sign` (1 the claimed side, -1 the
    opposite), by default the side the verdict names (the opposite one for "reversed")."""
    if sign is None:
      sign = -1 if self.verdict == "reversed" else 1
    return sum(1 for d, h in zip(self.differences, self.bands)
               if d is not None and h is not None and sign * d > h)

  def summary(self) -> str:
    """The verdict with the seeds outside noise, e.g. "confirmed (3 of 3 seeds outside noise)"; a
    claim not confirmed names both sides ("... (claimed side outside noise on 0 of 3 seeds, the
    opposite side on 2)")."""
    if not self.differences or not any(h is not None for h in self.bands):
      return self.verdict
    n = len(self.differences)
    if self.verdict.startswith("not confirmed"):
      return (f"{self.verdict} (claimed side outside noise on {self.outside_noise(1)} of {n} seeds, "
              f"the opposite side on {self.outside_noise(-1)})")
    return f"{self.verdict} ({self.outside_noise()} of {n} seeds outside noise)"

  def as_json(self) -> dict[str, Any]:
    return {"claim": self.number, "text": self.text, "verdict": self.verdict,
            "differences": self.differences, "bands": self.bands,
            "seeds_outside_noise": self.outside_noise(), "mean_difference": _mean(self.differences),
            "header": self.header, "rows": self.rows, "note": self.note}

  def markdown(self) -> str:
    out = [f"### Claim {self.number}: {self.text}", "", f"**Verdict: {self.summary()}**"
           + (f" (mean difference over seeds {_pp(_mean(self.differences))} points)"
              if self.differences else ""), ""]
    if self.rows:
      out += ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
      out += ["| " + " | ".join(row) + " |" for row in self.rows]
      out.append("")
    if self.note:
      out += [self.note, ""]
    return "\n".join(out)


def assess(rows: Sequence[Mapping[str, Any]], seeds: Sequence[int], kl_coefs: Sequence[float],
           turn_limits: Sequence[int] = TURN_LIMITS) -> list[Claim]:
  """Every claim's figures and verdict from the report's summary rows (`ablations.Report.summary_rows`:
  model "<arm> s<seed>", step, feedback, max_turns and the metrics mt_1atT, st_pass1, st_1at3)."""
  name = lambda arm, seed: f"{arm} s{seed}"
  claims = []
  mt = "mt_1atT"

  c = Claim("1", "RLEF raises multi-turn 1@3 over the starting policy (Tables 1-2)")
  c.header = ["seed", "MT 1@3 before RL", "MT 1@3 after RLEF", "difference (points)"]
  for s in seeds:
    b, a = pick(rows, name(RLEF, s), mt, before=True), pick(rows, name(RLEF, s), mt, before=False)
    c.rows.append([str(s), _fmt(b), _fmt(a), c.add(combine((1, a), (-1, b)))])
  c.verdict = verdict(c.differences)
  claims.append(c)

  c = Claim("2", "after RLEF, multi-turn beats independent sampling at equal budget: MT 1@3 > ST 1@3")
  c.header = ["seed", "MT 1@3 after RLEF", "ST 1@3 after RLEF", "difference (points)"]
  for s in seeds:
    m = pick(rows, name(RLEF, s), mt, before=False)
    st = pick(rows, name(RLEF, s), "st_1at3", before=False)
    c.rows.append([str(s), _fmt(m), _fmt(st), c.add(combine((1, m), (-1, st)))])
  c.verdict = verdict(c.differences)
  claims.append(c)

  c = Claim("3", "the gain comes from using the feedback: true > random feedback after RLEF, the gap "
            "growing with the turn limit and larger than before RL")
  c.header = ["seed", "turn limit", "before: true", "before: random", "after: true", "after: random",
              "gap after - gap before (points)"]
  gaps_after = {t: [] for t in turn_limits}
  for s in seeds:
    for t in turn_limits:
      cells = [pick(rows, name(RLEF, s), mt, before=be, feedback=f, max_turns=t)
               for be in (True, False) for f in ("true", "random")]
      gap_before, gap_after = _diff(cells[0], cells[1]), _diff(cells[2], cells[3])
      gaps_after[t].append(gap_after)
      growth = None if gap_before is None or gap_after is None else gap_after - gap_before
      if t == 3:
        c.add(combine((1, cells[2]), (-1, cells[3])))  # the claim's core: true > random after RL
      c.rows.append([str(s), str(t), *map(_fmt, cells), _pp(growth)])
  c.verdict = verdict(c.differences)
  mean_gaps = [(t, _mean(gaps_after[t])) for t in turn_limits]
  c.note = ("Verdict on the true - random gap at turn limit 3 after RLEF. Mean gap after RLEF by turn "
            "limit: " + ", ".join(f"{t}: {_pp(g)}" for t, g in mean_gaps) + " (it should grow with the "
            "limit; at limit 1 no feedback is ever shown, so it is 0 up to sampling noise).")
  claims.append(c)

  c = Claim("4", "RL with the feedback withheld in training gains less MT 1@3 than RLEF (Table 6b)")
  c.header = ["seed", "RLEF gain (points)", "no-feedback RL gain (points)", "difference (points)"]
  for s in seeds:
    cells = [pick(rows, name(arm, s), mt, before=be) for arm in (RLEF, BLIND) for be in (False, True)]
    gains = [_diff(cells[0], cells[1]), _diff(cells[2], cells[3])]
    difference = c.add(combine((1, cells[0]), (-1, cells[1]), (-1, cells[2]), (1, cells[3])))
    c.rows.append([str(s), _pp(gains[0]), _pp(gains[1]), difference])
  c.verdict = verdict(c.differences)
  claims.append(c)

  c = Claim("5", "single-turn RL improves single-turn scores, but multi-turn less than RLEF (Tables 4, 6b)")
  c.header = ["seed", "ST pass@1 gain, single-turn RL", "MT 1@3 gain, single-turn RL",
              "MT 1@3 gain, RLEF", "RLEF - single-turn RL (MT points)"]
  st_gains = []
  for s in seeds:
    # Training's evaluations (eval.max_turns = 3, whatever env.max_turns) hold MT 1@3 and ST pass@1.
    st_gain = _diff(pick(rows, name(SINGLE, s), "st_pass1", before=False),
                    pick(rows, name(SINGLE, s), "st_pass1", before=True))
    cells = [pick(rows, name(arm, s), mt, before=be) for arm in (RLEF, SINGLE) for be in (False, True)]
    rlef_gain, mt_gain = _diff(cells[0], cells[1]), _diff(cells[2], cells[3])
    st_gains.append(st_gain)
    difference = c.add(combine((1, cells[0]), (-1, cells[1]), (-1, cells[2]), (1, cells[3])))
    c.rows.append([str(s), _pp(st_gain), _pp(mt_gain), _pp(rlef_gain), difference])
  c.verdict = verdict(c.differences)
  c.note = (f"Verdict on RLEF's MT gain minus single-turn RL's. Single-turn RL's own ST pass@1 gain: "
            f"{verdict(st_gains)} (mean {_pp(_mean(st_gains))} points).")
  claims.append(c)

  lo, hi = min(turn_limits), max(turn_limits)
  c = Claim("6", f"more turns help the RLEF model more than the starting model: the MT 1@T gain from "
            f"T = {lo} to {hi} is larger after RLEF (Fig. 4b)")
  c.header = ["seed", f"before: 1@{lo} -> 1@{hi} (points)", f"after: 1@{lo} -> 1@{hi} (points)",
              "difference (points)"]
  for s in seeds:
    cells = [pick(rows, name(RLEF, s), mt, before=be, max_turns=t) for be in (True, False) for t in (hi, lo)]
    gains = [_diff(cells[0], cells[1]), _diff(cells[2], cells[3])]
    difference = c.add(combine((1, cells[2]), (-1, cells[3]), (-1, cells[0]), (1, cells[1])))
    c.rows.append([str(s), _pp(gains[0]), _pp(gains[1]), difference])
  c.verdict = verdict(c.differences)
  claims.append(c)

  c = Claim("7", "the turn-level value function beats a token-level one: MT 1@3 after RL (Table 6b)")
  c.header = ["seed", "MT 1@3 after RLEF (turn-level value)", "MT 1@3 after RL, token-level value",
              "difference (points)", "token-level value's gain over before RL (points)"]
  for s in seeds:
    turn_level = pick(rows, name(RLEF, s), mt, before=False)
    token_level = pick(rows, name(TOKEN_VALUE, s), mt, before=False)
    difference = c.add(combine((1, turn_level), (-1, token_level)))
    token_gain = _diff(token_level, pick(rows, name(TOKEN_VALUE, s), mt, before=True))
    c.rows.append([str(s), _fmt(turn_level), _fmt(token_level), difference, _pp(token_gain)])
  c.verdict = verdict(c.differences)
  c.note = ("Both arms start from the same warm-started policy (the value does not enter the warm start), "
            "so the after-RL figures compare the two value functions' training.")
  claims.append(c)

  c = Claim("β", "the paper's KL coefficient: MT 1@3 after RL and the KL reached, per rl.kl_coef")
  c.header = ["rl.kl_coef", *[f"MT 1@3 after RL, seed {s}" for s in seeds], "mean gain over before (points)"]
  for beta in kl_coefs:
    arm = kl_label(beta)
    cells = [pick(rows, name(arm, s), mt, before=False) for s in seeds]
    gains = [_diff(cell, pick(rows, name(arm, s), mt, before=True)) for cell, s in zip(cells, seeds)]
    c.rows.append([f"{beta:g}", *map(_fmt, cells), _pp(_mean(gains))])
  c.verdict = "a sweep (no verdict)"
  claims.append(c)
  return claims


# --------------------------------------------------------------------------------------------------
# The study


def run_study(out: pathlib.Path, quick: bool, seeds: Sequence[int], kl_coefs: Sequence[float],
              ablation_arms: Sequence[str] = tuple(ABLATION_ARMS),
              kept: pathlib.Path | None = None) -> list[Claim]:
  """Trains RLEF, the `ablation_arms` (keys of `ABLATION_ARMS`) and the β sweep for every seed, runs the
  evaluations, the report and `claims.md`; a claim whose arm was left out is "not confirmed (missing
  figures)". Seed by seed: RLEF and its evaluations, then the other arms, so that a study stopped
  midway has whole seeds. With `kept`, each finished unit is copied there without its checkpoints
  (`keep`) and what `out` lacks is first restored from there (`restore`)."""
  if kept is not None:
    restored = restore(kept, out)
    if restored:
      print(f"[claims] restored {restored} files of finished runs from {kept}")
    kept.mkdir(parents=True, exist_ok=True)  # which code ran each invocation of the kept study
    log = kept / STUDY_LOG
    history = json.loads(log.read_text()) if log.exists() else []
    history.append({"code": _code_version(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "quick": quick,
                    "seeds": list(seeds), "kl": list(kl_coefs), "arms": list(ablation_arms)})
    log.write_text(json.dumps(history, indent=1) + "\n")
  session = ablations.Session("claims", quick=quick, runs_root=out, seeds=seeds)
  tiny_kl = ablations.load_tiny_config().rl.kl_coef
  turn_limits = QUICK_TURN_LIMITS if quick else TURN_LIMITS
  arms = {RLEF: {}, **{ABLATION_ARMS[k][0]: ABLATION_ARMS[k][1] for k in ablation_arms}}
  for beta in kl_coefs:
    if beta != tiny_kl:
      arms[kl_label(beta)] = {"rl.kl_coef": beta}
  runs: dict[str, list[ablations.Run]] = {label: [] for label in arms}
  sweeps: dict[str, list[str]] = {}
  for seed in seeds:
    for label, overrides in arms.items():
      run = session.train(label, overrides, seed)
      runs[label].append(run)
      if label == RLEF:  # its evaluation sweeps need its checkpoints: run them before keeping it
        sweeps[run.name] = [name for checkpoint in ("reference", None)
                            for name in session.evaluate(run, feedback=("true", "random"),
                                                         max_turns=turn_limits, checkpoint=checkpoint)]
      if kept is not None:
        keep(run.workdir, out, kept)
  if tiny_kl in kl_coefs:  # the plain tiny run is the sweep's point at its own coefficient
    runs[kl_label(tiny_kl)] = [ablations.Run(kl_label(tiny_kl), r.seed, r.workdir, r.overrides, r.wall_s)
                               for r in runs[RLEF]]

  entries = []
  for label, arm_runs in runs.items():
    for run in arm_runs:
      records = list(run.training_records()) + (sweeps[run.name] if label == RLEF else [])
      entries.append((run, sorted(set(records))))
  report = session.report(entries, name="claims", show=False)
  claims = assess(report.summary_rows(), seeds, kl_coefs, turn_limits)
  write_claims(out, claims, report.out / "report.md", quick)
  if kept is not None:
    # The kept copy's claims.md names the report copied beside it (a path in the repository).
    write_claims(kept, claims, pathlib.Path(REPORT_DIR) / "report.md", quick, show=False)
    report_copy = kept / REPORT_DIR
    shutil.rmtree(report_copy, ignore_errors=True)
    shutil.copytree(report.out, report_copy, ignore=shutil.ignore_patterns("runs"))
  return claims


# --------------------------------------------------------------------------------------------------
# A light copy of the study (--keep): what a new machine needs to continue it and to rebuild the report

# Per run workdir: its markers, training scalars, evaluation summaries and episodes (gzipped), not its
# checkpoints, warm start or TensorBoard events.
# What the study writes into the kept copy besides runs (rewritten by each study, never restored).
CLAIMS_FILES, REPORT_DIR, STUDY_LOG = ("claims.md", "claims.json"), "report", "study.json"
STUDY_OUTPUTS = (*CLAIMS_FILES, REPORT_DIR, STUDY_LOG)
KEPT_FILES = (ablations.RUN_MARKER, ablations.EVALS_MARKER, "metrics.jsonl", "eval/*.json",
              "eval/*.episodes.jsonl")


def keep(workdir: pathlib.Path, out: pathlib.Path, kept: pathlib.Path) -> None:
  """Copies a finished run's `KEPT_FILES` into `kept`, at the same path relative to `out`; episodes as
  `.episodes.jsonl.gz` (the report reads either; ~50x smaller), written reproducibly (no gzip time)."""
  dest = kept / workdir.relative_to(out)
  for pattern in KEPT_FILES:
    for src in sorted(workdir.glob(pattern)):
      target = dest / src.relative_to(workdir)
      target.parent.mkdir(parents=True, exist_ok=True)
      if src.name.endswith(".episodes.jsonl"):
        with open(src, "rb") as f, open(f"{target}.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as g:
          shutil.copyfileobj(f, g)
      else:
        shutil.copyfile(src, target)


def _code_version() -> str:
  """The checkout's commit (`git describe --always --dirty`), or "unknown": a kept run is reused only
  under the same resolved config, and this says which code produced it."""
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ablations.REPO_ROOT,
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def restore(kept: pathlib.Path, out: pathlib.Path) -> int:
  """Copies into `out` each kept file it lacks (neither the file nor, for `.gz`, its plain form):
  the finished runs are then loaded and their evaluations found cached. Returns the files copied."""
  copied = 0
  if not kept.is_dir():
    return copied
  for src in sorted(kept.rglob("*")):
    rel = src.relative_to(kept)
    if not src.is_file() or rel.parts[0] in STUDY_OUTPUTS:
      continue
    target = out / rel
    if target.exists() or (target.suffix == ".gz" and target.with_suffix("").exists()):
      continue
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    copied += 1
  return copied


def write_claims(out: pathlib.Path, claims: Sequence[Claim], report_md: pathlib.Path, quick: bool,
                 show: bool = True) -> None:
  """claims.md and claims.json in `out`; claims.md names the report as `report_md`."""
  head = ["# The paper's claims on the tiny synthetic setting", ""]
  if quick:
    head += ["**QUICK mode: a smoke test of the study; the numbers are not results.**", ""]
  head += [f"Report (tables, plots): {report_md}. Figures in %, brackets: bootstrap 95% "
           "intervals resampling problems (the evaluation's noise; the seeds show training's). A "
           "difference's ± is the half-width of its ~95% band, its terms' standard errors (read off "
           "their intervals) added in quadrature as if independent: evaluations of the same problems "
           "are positively correlated, so the band errs wide. A verdict needs the claimed sign on "
           "every seed; \"outside noise\" counts the seeds whose difference also clears its band.", "",
           "| claim | verdict |", "|---|---|"]
  head += [f"| {c.number}: {c.text} | {c.summary()} |" for c in claims]
  text = "\n".join(head + [""] + [c.markdown() for c in claims])
  (out / "claims.md").write_text(text)
  (out / "claims.json").write_text(json.dumps([c.as_json() for c in claims], indent=1))
  if show:
    print(text)
  print(f"[claims] {out / 'claims.md'}")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="directory of the runs, the report and claims.md")
  parser.add_argument("--quick", action="store_true", help="smoke test: tiny runs, numbers mean nothing")
  parser.add_argument("--keep", default="",
                      help="directory of a light copy of the study (no checkpoints), refreshed after each "
                           "finished run and restored into --out first: a study continues from it on a "
                           "new machine; the repository keeps one in docs/reports/claims")
  parser.add_argument("--seeds", default="", help="comma-separated (default 0,1,2; --quick: 0)")
  parser.add_argument("--kl", default="0.05,1.0", help="rl.kl_coef values of the β sweep ('' = none)")
  parser.add_argument("--arms", default=",".join(ABLATION_ARMS),
                      help=f"the training ablations beside RLEF, comma-separated (default all: "
                           f"{','.join(ABLATION_ARMS)}); a part of the study runs and reports alone")
  args = parser.parse_args(argv)
  arms = tuple(a for a in args.arms.split(",") if a)
  unknown = [a for a in arms if a not in ABLATION_ARMS]
  if unknown:
    print(f"claims.py: --arms takes names among {','.join(ABLATION_ARMS)}, got {','.join(unknown)}",
          file=sys.stderr)
    return 2
  try:
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else (
        ablations.QUICK_SEEDS if args.quick else ablations.FULL_SEEDS)
    kl_coefs = tuple(float(b) for b in args.kl.split(",") if b)
  except ValueError as e:
    print(f"claims.py: --seeds and --kl take comma-separated numbers ({e})", file=sys.stderr)
    return 2
  if any(b < 0 for b in kl_coefs):
    print(f"claims.py: --kl values must be >= 0, got {args.kl}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  run_study(out, args.quick, seeds, kl_coefs, arms,
            pathlib.Path(args.keep).resolve() if args.keep else None)
  return 0


if __name__ == "__main__":
  sys.exit(main())
