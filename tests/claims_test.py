"""experiments/claims.py: the verdicts computed from report rows (fast), and the whole study in QUICK
mode (marked `notebooks`: it runs in that step, after the notebooks, loading the runs they trained)."""
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import claims  # noqa: E402
sys.path.remove(str(ROOT / "experiments"))


def _row(model, step, mt, st1=None, feedback="true", max_turns=3, checkpoint=None, st_pass1=None):
  cell = lambda v: None if v is None else {"mean": v, "ci95": [v - 0.05, v + 0.05]}
  return {"model": model, "record": f"r{step}", "checkpoint": checkpoint, "step": step,
          "feedback": feedback, "max_turns": max_turns, "mt_1atT": cell(mt), "st_1at3": cell(st1),
          "st_pass1": cell(st_pass1)}


def test_verdict_needs_the_sign_on_every_seed():
  assert claims.verdict([0.1, 0.2, 0.01]) == "confirmed"
  assert claims.verdict([-0.1, -0.2, -0.01]) == "reversed"
  assert claims.verdict([0.1, -0.2, 0.3]) == "not confirmed"
  assert claims.verdict([0.1, 0.0, 0.3]) == "not confirmed"
  assert claims.verdict([0.1, None, 0.3]) == "not confirmed (missing figures)"
  assert claims.verdict([-0.1, -0.1], expected_sign=-1) == "confirmed"


def test_a_differences_band_adds_the_terms_standard_errors_in_quadrature():
  cell = lambda mean, lo, hi: {"mean": mean, "ci95": [lo, hi]}
  # standard errors 0.03 and 0.04 (intervals of width 2 z se): the band is z * 0.05
  value, band = claims.combine((1, cell(0.7, 0.7 - claims.Z95 * 0.03, 0.7 + claims.Z95 * 0.03)),
                               (-1, cell(0.4, 0.4 - claims.Z95 * 0.04, 0.4 + claims.Z95 * 0.04)))
  assert value == pytest.approx(0.3) and band == pytest.approx(claims.Z95 * 0.05)
  assert claims.combine((1, cell(0.7, 0.6, 0.8)), (-1, None)) == (None, None)
  assert claims.combine((1, {"mean": 0.7}), (-1, cell(0.4, 0.3, 0.5))) == (pytest.approx(0.3), None)
  c = claims.Claim("x", "a claim")
  c.verdict = "reversed"
  c.add((-0.2, 0.1)), c.add((-0.05, 0.1)), c.add((0.3, 0.1))
  assert c.outside_noise() == 1  # only -0.2 clears its band on the reversed side
  assert c.summary() == "reversed (1 of 3 seeds outside noise)"
  assert c.outside_noise(1) == 1  # +0.3 on the claimed side
  c.verdict = "not confirmed"
  assert c.summary() == "not confirmed (claimed side outside noise on 1 of 3 seeds, the opposite side on 1)"


def test_assess_reads_before_and_after_per_seed_and_decides_each_claim():
  seeds = (0, 1)
  rows = []
  for s in seeds:
    r, b, one, tok = f"RLEF s{s}", f"RL without feedback s{s}", f"single-turn RL s{s}", f"token-level value s{s}"
    # RLEF: before (the reference checkpoint, step unknown) 0.40 -> after 0.70; ST 1@3 0.30 after.
    rows += [_row(r, None, 0.40, checkpoint="reference"), _row(r, 100, 0.70, st1=0.30)]
    # an earlier evaluation after RL must not be picked over the last one
    rows += [_row(r, 50, 0.10)]
    rows += [_row(r, 0, 0.35, feedback="random"), _row(r, 100, 0.45, feedback="random")]
    for t, (bt, at) in {1: (0.2, 0.3), 5: (0.45, 0.8)}.items():
      rows += [_row(r, 0, bt, max_turns=t), _row(r, 100, at, max_turns=t)]
    # no-feedback RL gains 0.10 on seed 0 but 0.40 on seed 1 (more than RLEF's 0.30): not confirmed
    rows += [_row(b, 0, 0.40), _row(b, 100, 0.50 if s == 0 else 0.80)]
    rows += [_row(one, 0, 0.40, st_pass1=0.10), _row(one, 100, 0.45, st_pass1=0.20)]
    # the token-level value reaches 0.60 (below RLEF's 0.70) on seed 0, 0.75 on seed 1: reversed there
    rows += [_row(tok, 0, 0.40), _row(tok, 100, 0.60 if s == 0 else 0.75)]
  out = {c.number: c for c in claims.assess(rows, seeds, kl_coefs=(1.0,), turn_limits=(1, 3, 5))}
  assert out["1"].verdict == "confirmed"
  assert out["1"].differences == pytest.approx([0.30, 0.30])
  assert out["2"].verdict == "confirmed" and out["2"].differences == pytest.approx([0.40, 0.40])
  assert out["3"].verdict == "confirmed" and out["3"].differences == pytest.approx([0.25, 0.25])
  assert out["4"].verdict == "not confirmed"
  assert out["4"].differences == pytest.approx([0.20, -0.10])
  assert out["5"].verdict == "confirmed" and out["5"].differences == pytest.approx([0.25, 0.25])
  assert "confirmed (mean +10.0 points)" in out["5"].note
  # Fig. 4b: gain from limit 1 to 5 is 0.25 before and 0.50 after RL
  assert out["6"].verdict == "confirmed" and out["6"].differences == pytest.approx([0.25, 0.25])
  assert out["7"].verdict == "not confirmed" and out["7"].differences == pytest.approx([0.10, -0.05])
  # each difference carries its band: two cells of interval width 10 points -> 1.96 * sqrt(2) * 10 / 3.92
  assert "| 1 | 70.0 [65.0, 75.0] | 75.0 [70.0, 80.0] | -5.0 ± 7.1 | +35.0 |" in out["7"].markdown()
  assert out["β"].rows == [["1", "—", "—", "—"]]  # no kl arm in these rows
  assert "| 0 | 40.0 [35.0, 45.0] | 70.0 [65.0, 75.0] | +30.0 ± 7.1 |" in out["1"].markdown()
  assert out["1"].summary() == "confirmed (2 of 2 seeds outside noise)"
  # claim 4's difference of gains has four terms: a band of 1.96 * 2 * 10 / 3.92 = 10 points
  assert out["4"].bands == pytest.approx([0.10, 0.10])
  assert out["4"].outside_noise() == 1  # +20 clears its band, -10 does not (and is on the wrong side)
  # +10 clears its band on the claimed side, -5 does not clear it on either
  assert out["7"].summary() == ("not confirmed (claimed side outside noise on 1 of 2 seeds, the "
                                "opposite side on 0)")


def test_bad_arguments_get_one_line():
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "claims.py"), "--out", "/tmp/x",
                         "--seeds", "a,b"], capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--seeds" in proc.stderr
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "claims.py"), "--out", "/tmp/x",
                         "--arms", "token,value"], capture_output=True, text=True)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "got value" in proc.stderr


def _fake_run(workdir, episodes):
  """A finished run's workdir as the study leaves it: markers, metrics, one evaluation, checkpoints."""
  (workdir / "eval").mkdir(parents=True)
  (workdir / "checkpoints" / "100").mkdir(parents=True)
  (workdir / "checkpoints" / "100" / "state").write_bytes(b"\0" * 1000)
  (workdir / "reference_params").mkdir()
  (workdir / "tensorboard").mkdir()
  (workdir / "notebook_run.json").write_text('{"label": "RLEF", "seed": 0, "wall_s": 1.0}')
  (workdir / "notebook_evals.json").write_text('{"k": {"records": ["evaluate_reference"]}}')
  (workdir / "metrics.jsonl").write_text('{"step": 2}\n')
  (workdir / "eval" / "step_0.json").write_text('{"name": "step_0"}')
  (workdir / "eval" / "step_0.episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))


def test_keep_copies_results_without_checkpoints_and_restore_brings_them_back(tmp_path):
  out, kept = tmp_path / "out", tmp_path / "kept"
  episodes = [{"problem": f"p{i}", "solved": i % 2 == 0, "public_passed": [True]} for i in range(50)]
  run = out / "full" / "tiny-s0-abc"
  _fake_run(run, episodes)
  claims.keep(run, out, kept)
  copy = kept / "full" / "tiny-s0-abc"
  assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
      "eval/step_0.episodes.jsonl.gz", "eval/step_0.json", "metrics.jsonl", "notebook_evals.json",
      "notebook_run.json"]
  with gzip.open(copy / "eval" / "step_0.episodes.jsonl.gz", "rt") as f:
    assert f.read() == (run / "eval" / "step_0.episodes.jsonl").read_text()
  first = (copy / "eval" / "step_0.episodes.jsonl.gz").read_bytes()
  claims.keep(run, out, kept)  # kept again after a later evaluation: the same bytes (no gzip time)
  assert (copy / "eval" / "step_0.episodes.jsonl.gz").read_bytes() == first
  (kept / "claims.md").write_text("old verdicts")  # the study's outputs are written anew, not restored

  fresh = tmp_path / "fresh"  # a new machine: --out lost, the kept copy restored into it
  assert claims.restore(kept, fresh) == 5
  restored = fresh / "full" / "tiny-s0-abc"
  assert (restored / "notebook_run.json").read_text() == (run / "notebook_run.json").read_text()
  assert not (fresh / "claims.md").exists() and not (restored / "checkpoints").exists()
  from rlef_jax import estimators  # the report reads the gzipped episodes as the plain ones
  assert estimators.read_episodes(str(restored / "eval" / "step_0.episodes.jsonl.gz")) == episodes
  # what --out already has is left alone, plain episodes included
  assert claims.restore(kept, fresh) == 0 and claims.restore(kept, out) == 0
  assert claims.restore(tmp_path / "none", fresh) == 0


@pytest.mark.notebooks
def test_the_study_runs_end_to_end_in_quick_mode(tmp_path_factory):
  """In the notebooks step, after the notebooks: the same runs directory as theirs (notebooks_test's
  `runs_dir`), so the arms they trained are loaded, not trained again."""
  runs = tmp_path_factory.getbasetemp() / "study_runs"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  kept = tmp_path_factory.mktemp("kept")
  study = lambda out: subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "claims.py"), "--out", str(out), "--quick",
       "--kl=0.05,1.0", "--keep", str(kept)], capture_output=True, text=True, env=env, timeout=1500)
  proc = study(runs)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  data = json.loads((runs / "claims.json").read_text())
  # The kept copy holds every finished run without checkpoints; from it alone (a new machine) the
  # study trains and evaluates nothing again and reaches the same verdicts and figures.
  # The same claims.md, except that the kept one names the report copied beside it.
  kept_md, runs_md = (kept / "claims.md").read_text(), (runs / "claims.md").read_text()
  assert "Report (tables, plots): report/report.md." in kept_md and (kept / "report" / "report.md").exists()
  unnamed = lambda text: re.sub(r"Report \(tables, plots\): \S+\.", "Report.", text)
  assert unnamed(kept_md) == unnamed(runs_md) and kept_md != runs_md
  assert not list(kept.rglob("checkpoints")) and list(kept.rglob("*.episodes.jsonl.gz"))
  again = study(tmp_path_factory.mktemp("new_machine"))
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "restored" in again.stdout and "$ python -m" not in again.stdout
  assert json.loads((kept / "claims.json").read_text()) == data
  assert [c["claim"] for c in data] == ["1", "2", "3", "4", "5", "6", "7", "β"]
  # every claim that has arms got its figures for seed 0 (QUICK: numbers mean nothing, but exist)
  for c in data[:7]:
    assert c["differences"] and all(d is not None for d in c["differences"]), c
  assert len(data[7]["rows"]) == 2
  assert "QUICK mode" in (runs / "claims.md").read_text()
