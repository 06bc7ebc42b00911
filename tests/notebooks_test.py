"""The ablation notebooks (experiments/notebooks): committed without outputs, Colab-ready, and each
executed end to end in QUICK mode.

The execution test is marked `notebooks`: scripts/test.sh runs it as its own step after the default
suite (about 5 minutes on 2 cores; experiments/notebooks/README.md says why), and `scripts/test.sh
--notebooks` runs it alone. Notebooks execute with nbclient on a kernel of this Python, in memory (the
executed copies go to pytest's temporary directory, never into the repository), with their runs under
a temporary `$RLEF_NOTEBOOK_RUNS` shared by the four so that equal runs are trained once.
"""
import json
import os
import pathlib
import sys
import time

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "experiments" / "notebooks"
# The order of execution: later notebooks load the runs that earlier ones trained.
NOTEBOOKS = ("feedback", "turn_budgets", "single_vs_multi_turn", "kl_coef")


def _load(name):
  return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def test_the_notebook_folder_holds_exactly_the_four_ablations():
  assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
  nb = _load(name)
  nbformat.validate(nb)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
           and (c.get("outputs") or c.get("execution_count") is not None)]
  assert not dirty, (f"{name}.ipynb has outputs or execution counts in cells {dirty}: clear them "
                     "before committing (Jupyter: Edit > Clear All Outputs; or jupyter nbconvert "
                     "--clear-output --inplace)")
  assert "widgets" not in nb.metadata, f"{name}.ipynb carries widget state: clear it"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_colab_ready_set_up_then_a_quick_switch(name):
  code = [c.source for c in _load(name).cells if c.cell_type == "code"]
  setup, quick = code[0], code[1]
  assert 'REPO_URL = "https://github.com/' in setup and "git\", \"clone\"" in setup
  assert "requirements.txt" in setup and 'os.environ.get("CI")' in setup
  assert "QUICK = True" in quick and "ablations.quick_mode(default=QUICK)" in quick
  assert f'ablations.Session("{name}"' in quick


def test_quick_mode_is_overridable_by_the_environment(monkeypatch):
  sys.path.insert(0, str(NOTEBOOK_DIR))
  try:
    import ablations
  finally:
    sys.path.remove(str(NOTEBOOK_DIR))
  monkeypatch.setenv("RLEF_NOTEBOOK_QUICK", "1")
  assert ablations.quick_mode(default=False)
  monkeypatch.setenv("RLEF_NOTEBOOK_QUICK", "0")
  assert not ablations.quick_mode(default=True)
  monkeypatch.delenv("RLEF_NOTEBOOK_QUICK")
  assert ablations.quick_mode(default=True)
  from rlef_jax import config as config_lib
  config_lib.validate(ablations.make_config(ablations.QUICK_OVERRIDES))


def test_a_run_has_the_same_name_in_every_clone(monkeypatch, tmp_path):
  """The run names (config fingerprints) that a kept study is found by do not depend on where the
  checkout lies, though configs/tiny.py's tokenizer path is absolute; other settings still count."""
  sys.path.insert(0, str(NOTEBOOK_DIR))
  try:
    import ablations
  finally:
    sys.path.remove(str(NOTEBOOK_DIR))
  config = ablations.make_config({})
  assert config.tokenizer.path.startswith(str(ablations.REPO_ROOT))
  here = ablations._fingerprint(config)
  elsewhere = tmp_path / "another" / "clone"
  moved = ablations.make_config({})
  moved.tokenizer.path = config.tokenizer.path.replace(str(ablations.REPO_ROOT), str(elsewhere))
  monkeypatch.setattr(ablations, "REPO_ROOT", elsewhere)
  assert ablations._fingerprint(moved) == here
  moved.rl.kl_coef = 0.5
  assert ablations._fingerprint(moved) != here
  moved.rl.kl_coef = config.rl.kl_coef
  moved.tokenizer.path = "/some/other/tokenizer"  # a path outside the checkout is a setting like any
  assert ablations._fingerprint(moved) != here


def test_a_field_added_later_keeps_the_kept_runs_names():
  """A config field added after runs were kept, at the value that computes what the code did before
  it (rlef_jax.config.FIELDS_ADDED_LATER), leaves the run names as they were: the names of
  docs/reports/claims's kept runs (committed before such fields existed) are still computed. Another
  value of that field is another run."""
  sys.path.insert(0, str(NOTEBOOK_DIR))
  try:
    import ablations
  finally:
    sys.path.remove(str(NOTEBOOK_DIR))
  from rlef_jax import config as config_lib
  kept = {path.name for path in (ROOT / "docs" / "reports" / "claims" / "full").iterdir()}
  # Every field the config has gained since the kept runs is listed (the kept RLEF run records the
  # resolved config it ran): a new field missing from FIELDS_ADDED_LATER would rename every kept run.
  recorded = json.loads((ROOT / "docs" / "reports" / "claims" / "full" / "tiny-s0-5be6edbcf4" /
                         "notebook_run.json").read_text())["config"]

  def flat(tree, prefix=""):
    return {k for key, value in tree.items()
            for k in (flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"})}

  gained = flat(ablations.make_config({}).to_dict()) - flat(recorded)
  assert gained == set(config_lib.FIELDS_ADDED_LATER), (
      f"config fields added since the kept runs {sorted(gained)}: list each in "
      "rlef_jax.config.FIELDS_ADDED_LATER with the value that computes what the code did before it")
  assert f"tiny-s0-{ablations._fingerprint(ablations.make_config({}))}" in kept
  token = ablations.make_config({"rl.value_level": "token"})
  assert ablations._fingerprint(token) == "3610956825"  # the seed-0 token arm's name before the fields
  for key, before in config_lib.FIELDS_ADDED_LATER.items():
    group, field = key.split(".")
    config = ablations.make_config({})
    assert config[group][field] == before  # the default is the old behaviour
    without = ablations.make_config({})
    with without.unlocked():
      del without[group][field]
    assert ablations._fingerprint(without) == ablations._fingerprint(config)
  changed = ablations.make_config({"rl.old_logp": "sampler"})
  assert ablations._fingerprint(changed) != ablations._fingerprint(ablations.make_config({}))


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
  """Shared with tests/claims_test.py's QUICK study (the same folder of pytest's base temporary
  directory), which then loads the runs the notebooks trained."""
  path = tmp_path_factory.getbasetemp() / "study_runs"
  path.mkdir(exist_ok=True)
  return path


def _kernel_env(runs_dir):
  env = dict(os.environ)
  # tests/conftest.py forces 8 host devices for the sharding tests; the notebooks run as a user would.
  env.pop("XLA_FLAGS", None)
  env.update(RLEF_NOTEBOOK_QUICK="1", RLEF_NOTEBOOK_RUNS=str(runs_dir), CI=env.get("CI", "true"),
             MPLBACKEND="Agg")
  return env


def _outputs(nb, output_type=None):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if output_type is None or o.output_type == output_type]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_end_to_end_in_quick_mode(name, runs_dir, tmp_path):
  from nbclient import NotebookClient
  nb = _load(name)
  client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=False,
                          resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  start = time.perf_counter()
  try:
    client.execute(env=_kernel_env(runs_dir))  # raises CellExecutionError on the first failing cell
  finally:
    nbformat.write(nb, tmp_path / f"{name}.executed.ipynb")  # for inspection; not in the repository
  seconds = time.perf_counter() - start
  print(f"{name}.ipynb executed in QUICK mode in {seconds:.0f} s")

  text = "\n".join(o.get("text", "") for o in _outputs(nb, "stream"))
  assert "QUICK" in text and str(runs_dir) in text, "the notebook did not run in QUICK mode in runs_dir"
  data = [o["data"] for o in _outputs(nb) if o.output_type in ("display_data", "execute_result")]
  markdown = "\n".join(d.get("text/markdown", "") for d in data)
  assert "| model | checkpoint | feedback |" in markdown, "no summary table was shown"
  assert "# RLEF evaluation report" in markdown, "report.md was not shown"
  assert sum("image/png" in d for d in data) >= 1, "no plot was shown"
  assert f"python: {sys.executable}" in text, "the kernel did not run in this Python (the venv)"
  report = json.loads((runs_dir / "quick" / "reports" / name / name / "report.json").read_text())
  assert report["records"], "the report has no evaluation records"
