"""rlef_jax.report: tables checked against values computed here from hand-written records, plots from
their Figure objects and the PNGs read back, and the command's exit codes."""
import gzip
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from rlef_jax import estimators as est
from rlef_jax import report
from rlef_jax import report_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY = os.path.join(ROOT, "tests", "fixtures", "report", "legacy_workdir")
T, F = True, False
OPTS = report_records.Options()


# --------------------------------------------------------------------------------------------------
# Independent computations (from the definitions, without rlef_jax.estimators)


def brute_n_at_k(samples, n, k):
  """Every k-subset, every choice of n among those passing the public tests (no fill)."""
  total = Fraction(0)
  subsets = list(itertools.combinations(range(len(samples)), k))
  for subset in subsets:
    kept = [i for i in subset if samples[i][0]]
    choices = list(itertools.combinations(kept, n)) if len(kept) > n else [kept]
    total += Fraction(sum(any(samples[i][1] for i in c) for c in choices), len(choices))
  return float(total / len(subsets))


def brute_st_one_at_three(samples):
  ordered = list(itertools.permutations(samples, 3))
  return float(Fraction(sum(next((s for s in t if s[0]), t[-1])[1] for t in ordered), len(ordered)))


def mean_solved(samples):
  return sum(s[1] for s in samples) / len(samples)


def interval(values, resamples=200, seed=0):
  """Bootstrap over problems written out: `resamples` draws of P problem indices, percentiles."""
  rng = np.random.default_rng(seed)
  means = sorted(sum(values[i] for i in rng.integers(0, len(values), size=len(values))) / len(values)
                 for _ in range(resamples))
  def pct(q):
    pos = q / 100 * (len(means) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(means) - 1)
    return means[lo] + (pos - lo) * (means[hi] - means[lo])
  return pct(2.5), pct(97.5)


def fmt(values, samples_per_problem):
  """The report's cell text for per-problem `values`."""
  mean = sum(values) / len(values)
  lo, hi = interval(values)
  return (f"{100 * mean:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) "
          f"[{len(values)}×{samples_per_problem}]")


# --------------------------------------------------------------------------------------------------
# Writing records by hand


def _episode(problem, public, solved, turns, mode, turn_log=None):
  passed = [False] * (turns - 1) + [public]
  if turn_log is None:
    turn_log = [{"response": "```python\nx = %d\n```" % t, "code": f"x = {t}", "valid": True,
                 "truncated": False, "public_verdicts": "P" if passed[t] else "W",
                 "feedback": None} for t in range(turns)]
  return {"problem": problem, "mode": mode, "turns": turns, "valid": [True] * turns,
          "public_passed": passed, "solved": solved, "truncated": False, "turn_log": turn_log,
          "final_verdicts": "P" if solved else "W", "final_groups": [["public", 1], ["private", 1]]}


def write_record(workdir, name, meta, mt, st=None):
  """mt / st: {problem: [(public, solved[, turns]), ...]}; the summary as rlef_jax.evaluate writes
  it (means over episodes), plus the metadata `meta`."""
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  episodes = [_episode(p, s[0], s[1], s[2] if len(s) > 2 else 1, "multi_turn")
              for p, ss in mt.items() for s in ss]
  episodes += [_episode(p, s[0], s[1], 1, "single_turn") for p, ss in (st or {}).items() for s in ss]
  solved = [e["solved"] for e in episodes if e["mode"] == "multi_turn"]
  summary = {"name": name, **meta, "problems": len(mt),
             "rollouts_per_problem": len(next(iter(mt.values()))),
             "multi_turn_1at3": {"mean": float(np.mean(solved)), "ci95": [0.0, 1.0],
                                 "episodes": len(solved)}}
  with open(os.path.join(workdir, "eval", f"{name}.json"), "w") as f:
    json.dump(summary, f)
  with open(os.path.join(workdir, "eval", f"{name}.episodes.jsonl"), "w") as f:
    f.writelines(json.dumps(e) + "\n" for e in episodes)


def meta(checkpoint, step, split, feedback="true", max_turns=3, temperature=0.2):
  return {"checkpoint": checkpoint, "step": step, "dataset": "synthetic", "split": split,
          "feedback": feedback, "max_turns": max_turns, "temperature": temperature, "top_p": 0.95}


REF_MT = {"p1": [(T, T, 1), (F, F, 3)], "p2": [(F, F, 3), (F, F, 3)], "p3": [(T, T, 2), (T, F, 1)]}
REF_ST = {"p1": [(T, T), (F, F), (F, F), (T, F), (F, F), (F, F)],
          "p2": [(F, F)] * 6,
          "p3": [(T, T), (T, T), (F, F), (T, F), (F, F), (T, T)]}
RL_MT = {"p1": [(T, T, 1), (T, T, 2)], "p2": [(F, F, 3), (T, T, 3)], "p3": [(T, T, 1), (T, F, 1)]}
RL_ST = {"p1": [(T, T), (T, F), (F, F), (T, F), (F, F), (T, T)],
         "p2": [(F, F), (F, F), (T, T), (F, F), (F, F), (F, F)],
         "p3": [(T, T), (T, T), (F, F), (T, T), (F, F), (T, T)]}
VALID_MT = {"v1": [(T, T, 1), (F, F, 3)], "v2": [(T, T, 2), (T, T, 1)]}
STEP4_MT = {"v1": [(F, F, 3), (F, F, 3)], "v2": [(T, T, 2), (F, F, 3)]}
RANDOM_MT = {"p1": [(F, F, 3), (T, T, 2)], "p2": [(F, F, 3), (F, F, 3)], "p3": [(T, F, 1), (F, F, 3)]}


@pytest.fixture()
def rlef_workdir(tmp_path):
  """A training run: reference and step-8 evaluations on test, steps 4 and 8 on valid, a random-
  feedback evaluation of step 8, and 8 training steps."""
  w = str(tmp_path / "rlef")
  write_record(w, "evaluate_reference_test", meta("reference", None, "test"), REF_MT, REF_ST)
  write_record(w, "evaluate_step_8_test", meta("step_8", 8, "test"), RL_MT, RL_ST)
  write_record(w, "step_8_final", meta("step_8", 8, "valid"), VALID_MT)
  write_record(w, "step_4", meta("step_4", 4, "valid"), STEP4_MT)
  write_record(w, "evaluate_step_8_test_random", meta("step_8", 8, "test", feedback="random"),
               RANDOM_MT)
  with open(os.path.join(w, "metrics.jsonl"), "w") as f:
    for step in range(1, 9):
      f.write(json.dumps({"step": step, "solve/private": step / 16, "episode/turns": 2.5}) + "\n")
  return w


def md_row(markdown, *prefix):
  """The cells of the first table row whose leading cells are `prefix`."""
  for line in markdown.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
    if line.startswith("|") and cells[:len(prefix)] == list(prefix):
      return cells
  raise AssertionError(f"no row {prefix} in\n{markdown}")


def section(markdown, title):
  """The text of the table whose heading contains `title`."""
  return markdown.split("### ")[[i for i, part in enumerate(markdown.split("### "))
                                 if part.startswith(title) or title in part.split("\n")[0]][0]]


def note_mark(table, text):
  """"—[n]" for the note `text` of a table section."""
  n = next(l.split(".")[0] for l in table.splitlines() if l.split(". ", 1)[-1] == text)
  return f"—[{n}]"


def md_header(markdown, title):
  lines = markdown.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("### ") and title in l)
  header = next(l for l in lines[start:] if l.startswith("|"))
  return [c.strip() for c in header.strip().strip("|").split(" | ")]


def build(*paths, opts=OPTS):
  workdirs = [report_records.load_workdir(p, l) for p, l in zip(paths, report_records.workdir_labels(paths))]
  return report.build_report(workdirs, opts)


# --------------------------------------------------------------------------------------------------
# Tables


def test_tables_hold_the_numbers_computed_independently(rlef_workdir):
  markdown, data, _ = build(rlef_workdir)
  ref_mt = [mean_solved(s) for s in REF_MT.values()]
  rl_mt = [mean_solved(s) for s in RL_MT.values()]
  valid_mt = [mean_solved(s) for s in VALID_MT.values()]
  ref_st = [brute_st_one_at_three(s) for s in REF_ST.values()]
  rl_st = [brute_st_one_at_three(s) for s in RL_ST.values()]

  # Table 1: columns per dataset/split; before RL has no valid record.
  assert md_header(markdown, "Table 1")[3:] == ["synthetic/valid", "synthetic/test"]
  row = md_row(markdown, "rlef", "before RL", "MT 1@3")
  assert row[4] == fmt(ref_mt, 2) and row[3].startswith("—")
  row = md_row(markdown, "rlef", "after RL (step 8)", "MT 1@3")
  assert row[4] == fmt(rl_mt, 2) and row[3] == fmt(valid_mt, 2)
  # 10@100 from 2 rollouts / 6 single-turn samples per problem: not a number, a note.
  row = md_row(markdown, "rlef", "after RL (step 8)", "MT 10@100")
  assert row[3].startswith("—[") and row[4].startswith("—[")
  assert "needs >= 33 multi-turn rollouts per problem; the records have 2" in markdown
  assert "needs >= 100 single-turn samples per problem; the records have 6" in markdown
  assert md_row(markdown, "rlef", "after RL (step 8)", "ST 10@100")[3].startswith("—[")

  # Table 2: ST vs MT 1@3 per dataset/split.
  assert md_header(markdown, "Table 2")[2:] == ["synthetic/valid ST", "synthetic/valid MT",
                                                "synthetic/test ST", "synthetic/test MT"]
  table2 = section(markdown, "Table 2")
  row = md_row(table2, "rlef", "before RL")
  assert row[4:6] == [fmt(ref_st, 6), fmt(ref_mt, 2)]
  row = md_row(table2, "rlef", "after RL (step 8)")
  # valid has no single-turn samples
  assert row[2:6] == [note_mark(table2, "no single-turn samples in the records"), fmt(valid_mt, 2),
                      fmt(rl_st, 6), fmt(rl_mt, 2)]

  # Unrounded values in report.json, the same numbers.
  cells = {(c["phase"], c["column"], c["metric"]): c for c in data["tables"]["table2_st_vs_mt"]}
  c = cells[("after RL (step 8)", "synthetic/test", "ST 1@3")]
  assert c["mean"] == pytest.approx(np.mean(rl_st), abs=1e-12)
  assert c["ci95"] == pytest.approx(list(interval(rl_st)), abs=1e-12)
  assert c["problems"] == 3 and c["samples_per_problem"] == [6, 6]
  c = cells[("before RL", "synthetic/test", "MT 1@3")]
  assert c["mean"] == pytest.approx(np.mean(ref_mt), abs=1e-12)
  assert c["ci95"] == pytest.approx(list(interval(ref_mt)), abs=1e-12)


def test_interval_options(rlef_workdir):
  _, data, _ = build(rlef_workdir, opts=report_records.Options(resamples=50, seed=3))
  cells = {(c["phase"], c["column"], c["metric"]): c for c in data["tables"]["table1_n_at_k"]}
  rl_mt = [mean_solved(s) for s in RL_MT.values()]
  c = cells[("after RL (step 8)", "synthetic/test", "MT 1@3")]
  assert c["ci95"] == pytest.approx(list(interval(rl_mt, resamples=50, seed=3)), abs=1e-12)
  markdown, data, _ = build(rlef_workdir, opts=report_records.Options(unit="samples"))
  assert "each problem's samples resampled, problems fixed" in markdown
  cells = {(c["phase"], c["column"], c["metric"]): c for c in data["tables"]["table1_n_at_k"]}
  c = cells[("after RL (step 8)", "synthetic/test", "MT 1@3")]
  assert c["ci95"] == pytest.approx(list(est.bootstrap_over_samples(
      list(RL_MT.values()), mean_solved, resamples=200, seed=0)), abs=1e-12)
  assert c["mean"] == pytest.approx(np.mean(rl_mt))


def test_ablation_rows_per_feedback_kind(rlef_workdir):
  markdown, data, _ = build(rlef_workdir)
  table = section(markdown, "Tables 3 / 6")
  assert md_header(markdown, "Tables 3 / 6")[5:] == ["synthetic/valid", "synthetic/test"]
  true_row = md_row(table, "rlef", "after RL (step 8)", "true", "3", "0.2")
  random_row = md_row(table, "rlef", "after RL (step 8)", "random", "3", "0.2")
  assert true_row[6] == fmt([mean_solved(s) for s in RL_MT.values()], 2)
  assert true_row[5] == fmt([mean_solved(s) for s in VALID_MT.values()], 2)
  assert random_row[6] == fmt([mean_solved(s) for s in RANDOM_MT.values()], 2)
  assert random_row[5] == ""  # no random-feedback evaluation on valid
  # The random-feedback record stays out of Tables 1 and 2.
  assert all(c["record"].endswith("_random.json") is False for c in data["tables"]["table1_n_at_k"])


def test_10_at_100_cells_match_enumeration(tmp_path):
  """34 rollouts and 102 single-turn samples per problem: MT 10@100 = 10 of 33 finals, ST 10@100."""
  mt = {"a": [(T, T, 1)] * 2 + [(T, F, 3)] * 3 + [(F, F, 3)] * 29,
        "b": [(T, T, 2)] + [(T, F, 1)] * 11 + [(F, F, 3)] * 22}
  st = {"a": [(T, T)] + [(T, F)] * 4 + [(F, F)] * 97,
        "b": [(T, T)] * 2 + [(T, F)] * 9 + [(F, F)] * 91}
  w = str(tmp_path / "wide")
  write_record(w, "evaluate_step_2_test", meta("step_2", 2, "test", temperature=1.0), mt, st)
  markdown, data, _ = build(w)
  mt_values = [brute_n_at_k(s, 10, 33) for s in mt.values()]
  st_values = [brute_n_at_k(s, 10, 100) for s in st.values()]
  assert md_row(markdown, "wide", "after RL (step 2)", "MT 10@100")[3] == fmt(mt_values, 34)
  assert md_row(markdown, "wide", "after RL (step 2)", "ST 10@100")[3] == fmt(st_values, 102)
  # MT 1@3 at temperature 1.0 carries a note: the paper's 1@3 uses 0.2.
  assert md_row(markdown, "wide", "after RL (step 2)", "MT 1@3")[3].endswith("[1]")
  assert "temperature 1 (paper: 0.2)" in markdown
  rec = data["records"][0]["metrics"]
  assert rec["mt_10at100"]["mean"] == pytest.approx(np.mean(mt_values), abs=1e-12)
  assert rec["st_10at100"]["mean"] == pytest.approx(np.mean(st_values), abs=1e-12)
  assert rec["mt_pass10"]["mean"] == pytest.approx(
      np.mean([1 - math.comb(34 - 2, 10) / math.comb(34, 10), 1 - math.comb(33, 10) / math.comb(34, 10)]),
      abs=1e-12)


def test_legacy_records_infer_what_names_carry_and_fall_back_to_summaries(tmp_path):
  markdown, data, _ = build(LEGACY)
  recs = {r["name"]: r for r in data["records"]}
  step0, final = recs["step_0"], recs["step_4_final"]
  assert (step0["checkpoint"], step0["step"], step0["split"], step0["dataset"]) == (
      "step_0", 0, None, None)
  assert step0["max_turns"] == 3 and step0["max_turns_inferred"]
  assert (final["checkpoint"], final["step"]) == ("step_4", 4)
  # Numbers from the episodes where they exist ...
  samples = est.load_samples(os.path.join(LEGACY, "eval", "step_0.episodes.jsonl"))
  st = [brute_st_one_at_three(p.samples) for p in samples.single_turn]
  assert step0["metrics"]["st_1at3"]["mean"] == pytest.approx(np.mean(st), abs=1e-12)
  assert step0["metrics"]["mt_1atT"]["mean"] == pytest.approx(0.5)
  # ... and from the summary (noted) where no episodes file was written.
  assert final["metrics"]["mt_1atT"]["source"] == "summary"
  assert final["metrics"]["mt_1atT"]["mean"] == 0.75 and final["metrics"]["mt_1atT"]["ci95"] == [
      0.25, 1.0]
  row = md_row(section(markdown, "All evaluations"), "legacy_workdir", "step_4_final")
  assert row[8].startswith("75.0 (25.0–100.0) [2×2][")
  assert "from the summary: interval over episodes (rlef_jax.evaluate)" in markdown
  assert "turn limit not recorded; 3 assumed" in markdown
  assert md_row(section(markdown, "All evaluations"), "legacy_workdir", "step_0")[4:8] == ["?/?", "?", "3?", "?"]


@pytest.mark.parametrize("name,expected", [
    ("step_800", {"checkpoint": "step_800", "step": 800}),
    ("step_800_final", {"checkpoint": "step_800", "step": 800}),
    ("evaluate_step_3_test", {"checkpoint": "step_3", "step": 3, "split": "test"}),
    ("evaluate_reference_valid", {"checkpoint": "reference", "split": "valid"}),
    ("evaluate_params_test[:8]", {"checkpoint": "params", "split": "test[:8]"}),
    ("evaluate_my_ckpt", {"checkpoint": "my_ckpt"}),
    ("custom", {}),
])
def test_names_metadata(name, expected):
  assert report_records.names_metadata(name) == expected


# --------------------------------------------------------------------------------------------------
# Plots: series from the Figure objects, pixels from the PNGs


def _legend(ax):
  return [t.get_text() for t in ax.get_legend().get_texts()]


def test_training_plot_series(rlef_workdir):
  _, _, figs = build(rlef_workdir)
  fig = figs["training"]
  (ax,) = [a for a in fig.axes if a.get_visible() and a.axison]
  assert _legend(ax) == ["eval MT 1@3 synthetic/test", "eval MT 1@3 synthetic/valid",
                         "train solve/private"]
  test_line, valid_line, train_line = ax.get_lines()
  assert list(test_line.get_xdata()) == [0, 8]
  np.testing.assert_allclose(test_line.get_ydata(), [np.mean([mean_solved(s) for s in m.values()])
                                                     for m in (REF_MT, RL_MT)])
  assert list(valid_line.get_xdata()) == [4, 8]
  assert list(train_line.get_xdata()) == list(range(1, 9))
  assert len(ax.collections) == 2  # one interval band per evaluation series


def test_turn_limit_plot_true_vs_random_feedback(tmp_path):
  w = str(tmp_path / "sweep")
  rng = np.random.default_rng(0)
  for t in (1, 2, 3):
    ten = {p: [(bool(x), bool(x)) + (t,) for x in rng.integers(0, 2, 10)] for p in ("a", "b")}
    two = {p: [(F, F, t), (T, T, 1)] for p in ("a", "b")}
    write_record(w, f"evaluate_step_8_test_true_{t}", meta("step_8", 8, "test", "true", t), ten)
    write_record(w, f"evaluate_step_8_test_random_{t}", meta("step_8", 8, "test", "random", t), two)
  _, _, figs = build(w)
  (ax,) = [a for a in figs["turn_limit"].axes if a.axison]
  assert _legend(ax) == ["step_8, random feedback: pass@1", "step_8, true feedback: pass@1",
                         "step_8, true feedback: pass@10"]  # 2 rollouts: no pass@10 for random
  for line in ax.get_lines():
    assert list(line.get_xdata()) == [1, 2, 3]
  assert [l.get_linestyle() for l in ax.get_lines()] == ["-", "-", "--"]
  assert figs["training"] is not None and figs["errors"] is not None


def test_sample_budget_plot_series(rlef_workdir):
  _, _, figs = build(rlef_workdir)
  axes = [a for a in figs["sample_budget"].axes if a.axison]
  titles = [a.get_title() for a in axes]
  assert titles == ["rlef: before RL, synthetic/test, temperature 0.2",
                    "rlef: after RL (step 8), synthetic/valid, temperature 0.2",
                    "rlef: after RL (step 8), synthetic/test, temperature 0.2"]
  # 6 single-turn samples and 2 rollouts: 1@k only (10@k needs a budget of 10).
  assert _legend(axes[2]) == ["ST 1@k", "MT 1@k"]
  assert _legend(axes[1]) == ["MT 1@k"]
  st_line, mt_line = axes[2].get_lines()
  assert list(st_line.get_xdata()) == [1, 2, 3, 4, 5, 6]
  assert st_line.get_ydata()[2] == pytest.approx(
      np.mean([brute_n_at_k(s, 1, 3) for s in RL_ST.values()]), abs=1e-12)
  assert list(mt_line.get_xdata()) == [3, 6]  # budgets of 1 and 2 rollouts of up to 3 turns
  assert mt_line.get_ydata()[1] == pytest.approx(
      np.mean([brute_n_at_k(s, 1, 2) for s in RL_MT.values()]), abs=1e-12)


def test_error_plot_per_turn_by_hand():
  _, _, figs = build(LEGACY)
  axes = figs["errors"].axes
  assert len(axes) == 3  # one panel group: the only record with episodes
  ax_cat, ax_rep, ax_edit = axes
  assert _legend(ax_cat) == ["passed", "wrong output", "exception", "no code"]
  heights = {label: [b.get_height() for b in c]
             for label, c in zip(_legend(ax_cat), ax_cat.containers)}
  # Turn 1: 4 responses (2 passed, 1 wrong output, 1 no code); turn 2: 2 (1 passed, 1 exception);
  # turn 3: 1 (exception).
  assert heights == {"passed": [0.5, 0.5, 0.0], "wrong output": [0.25, 0.0, 0.0],
                     "exception": [0.0, 0.5, 1.0], "no code": [0.25, 0.0, 0.0]}
  # Pairs of consecutive programs: turn 2 one (the no-code turn forms none), turn 3 one repeat.
  assert [b.get_height() for b in ax_rep.containers[0]] == [0.0, 1.0]
  add = "a, b = map(int, input().split())\nprint(a + b)"
  assert [b.get_height() for b in ax_edit.containers[0]] == pytest.approx(
      [1 - est.chrf(add, "print(int(input()) - 1)"), 0.0])


def test_command_writes_readable_pngs(tmp_path):
  work = tmp_path / "legacy"
  shutil.copytree(LEGACY, work)
  proc = subprocess.run([sys.executable, "-m", "rlef_jax.report", str(work)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  out = work / "report"
  assert sorted(os.listdir(out)) == ["errors.png", "report.json", "report.md", "sample_budget.png",
                                     "training.png"]
  assert "turn_limit.png: not drawn" in (out / "report.md").read_text()
  sizes = {"training.png": (500, 360), "sample_budget.png": (500, 360), "errors.png": (1500, 360)}
  for name, size in sizes.items():
    image = Image.open(out / name)
    assert image.size == size
    pixels = np.asarray(image.convert("RGB"), np.float64)
    assert pixels.std() > 10  # not blank
  data = json.loads((out / "report.json").read_text())
  assert data["plots"]["turn_limit"] is None and data["options"]["resamples"] == 200


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit code 2


def _run_main(capsys, *argv):
  code = report.main(list(argv))
  err = capsys.readouterr().err
  return code, err


def test_missing_workdir_and_no_records(tmp_path, capsys):
  code, err = _run_main(capsys, str(tmp_path / "nope"))
  assert code == 2 and err == f"rlef_jax.report: error: {tmp_path / 'nope'}: no such workdir\n"
  (tmp_path / "empty").mkdir()
  code, err = _run_main(capsys, str(tmp_path / "empty"))
  assert code == 2 and err.count("\n") == 1
  assert f"{tmp_path / 'empty' / 'eval'}: no evaluation records" in err


@pytest.mark.parametrize("target,content,message", [
    ("eval/step_0.episodes.jsonl", None, "eval/step_0.episodes.jsonl:3: not valid JSON"),
    ("eval/step_0.json", '{"name": "step_0", ', "eval/step_0.json:1: not valid JSON"),
    ("eval/step_0.json", '{"name": "step_0", "max_turns": "three"}',
     "eval/step_0.json: 'max_turns' must be int"),
    ("eval/step_0.json", '{"multi_turn_1at3": 0.5}', "eval/step_0.json: 'multi_turn_1at3' must be"),
    ("eval/step_0.json", '[1]', "eval/step_0.json: expected a JSON object"),
    ("metrics.jsonl", '{"step": 1}\n{"step": "x"}\n', "metrics.jsonl:2: a metrics row needs"),
    ("metrics.jsonl", '{"step": 1}\n{"step": 2\n', "metrics.jsonl:2: not valid JSON"),
])
def test_corrupt_files_name_the_file(tmp_path, capsys, target, content, message):
  work = tmp_path / "w"
  shutil.copytree(LEGACY, work)
  path = work / target
  if content is None:  # corrupt the third line of the episodes
    lines = path.read_text().splitlines(True)
    lines[2] = lines[2][:40] + "\n"
    content = "".join(lines)
  path.write_text(content)
  code, err = _run_main(capsys, str(work), "--out", str(tmp_path / "out"))
  assert code == 2
  assert err.startswith("rlef_jax.report: error: ") and err.count("\n") == 1
  assert err.startswith(f"rlef_jax.report: error: {work / message.split(':')[0]}:")
  assert f"{work}/{message}" in err
  assert not (tmp_path / "out").exists()


def _gzip_episodes(workdir):
  """Replaces every eval/NAME.episodes.jsonl of `workdir` by NAME.episodes.jsonl.gz (an archived run)."""
  for name in os.listdir(os.path.join(workdir, "eval")):
    if name.endswith(".episodes.jsonl"):
      path = os.path.join(workdir, "eval", name)
      with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        g.write(f.read())
      os.remove(path)


def test_gzipped_episodes_give_the_same_report(tmp_path, rlef_workdir):
  plain = build(rlef_workdir)
  archived = str(tmp_path / "archived" / "rlef")  # the same label
  shutil.copytree(rlef_workdir, archived)
  _gzip_episodes(archived)
  assert not [n for n in os.listdir(os.path.join(archived, "eval")) if n.endswith(".jsonl")]
  gz = build(archived)
  assert gz[0].replace(archived, rlef_workdir) == plain[0]  # the markdown: every table's numbers
  assert json.dumps(gz[1]).replace(archived, rlef_workdir) == json.dumps(plain[1])
  # a plain file wins over an archived one beside it (episodes_file's order)
  stem = os.path.join(archived, "eval", "step_4.json")
  assert report_records.episodes_file(stem).endswith(".episodes.jsonl.gz")
  shutil.copyfile(os.path.join(rlef_workdir, "eval", "step_4.episodes.jsonl"),
                  os.path.join(archived, "eval", "step_4.episodes.jsonl"))
  assert report_records.episodes_file(stem).endswith(".episodes.jsonl")


@pytest.mark.parametrize("damage", ["not gzip", "cut"])
def test_corrupt_gzipped_episodes_name_the_file(tmp_path, capsys, rlef_workdir, damage):
  work = str(tmp_path / "w")
  shutil.copytree(rlef_workdir, work)
  _gzip_episodes(work)
  path = os.path.join(work, "eval", "step_4.episodes.jsonl.gz")
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(b"plain text, not gzip\n" if damage == "not gzip" else data[:len(data) // 2])
  code, err = _run_main(capsys, work, "--out", str(tmp_path / "out"))
  assert code == 2 and err.count("\n") == 1
  assert err.startswith(f"rlef_jax.report: error: {path}: cannot read")


def test_command_exit_codes(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "rlef_jax.report", str(tmp_path / "missing")],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr == f"rlef_jax.report: error: {tmp_path / 'missing'}: no such workdir\n"
  proc = subprocess.run([sys.executable, "-m", "rlef_jax.report", LEGACY, "--label", "a", "--label",
                         "b"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--label given 2 times for 1 workdirs" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_labels_and_default_output(tmp_path, rlef_workdir, capsys):
  other = tmp_path / "x" / "rlef"
  shutil.copytree(rlef_workdir, other)
  assert report_records.workdir_labels([rlef_workdir, str(other)]) == [os.path.normpath(rlef_workdir),
                                                                os.path.normpath(other)]
  assert report_records.workdir_labels(["a/b/", "c"]) == ["b", "c"]
  code = report.main([rlef_workdir, LEGACY, "--label", "RLEF", "--label", "old"])
  assert code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"[report] wrote {os.path.join(rlef_workdir, 'report', 'report.md')}")
  text = (tmp_path / "rlef" / "report" / "report.md").read_text()
  assert "| RLEF | before RL | MT 1@3 |" in text and "| old | " in text
