"""Bad input through the real commands (`python -m rlef_jax.train` / `.evaluate` / `.convert` as
subprocesses) ends in one line `error: ...` naming the culprit, a non-zero exit status, no traceback,
and nothing written: no workdir, nothing in the working directory, no prepared dataset (rlef_jax.cli).

Every case runs in its own empty working directory; the cases run a few at a time (most fail before
JAX starts, the others once the tokenizer, checkpoint or dataset is looked at).
"""
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
# The tiny config on another dataset (its warm start builds dialogues of the synthetic family only).
NOT_SYNTHETIC = ["--config.warmstart.dialogue_turns=1", "--config.warmstart.feedback_fraction=0"]


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  args: tuple  # after `python -m`; "{tmp}" is the shared input directory, "{wd}" the case's workdir
  culprit: str  # must appear in the last stderr line ("{tmp}" substituted)
  skip_as_root: str = ""


def _train(*args):
  return ("rlef_jax.train", f"--config={TINY}", "--workdir={wd}", *args)


CASES = [
    Case("unknown_field", _train("--config.rl.no_such_field=1"), "--config.rl.no_such_field"),
    Case("misspelt_field", _train("--config.rl.kl_coeff=1"), "did you mean config.rl.kl_coef"),
    Case("missing_config_file",
         ("rlef_jax.train", "--config=configs/no_such_config.py", "--workdir={wd}"),
         "configs/no_such_config.py does not exist"),
    Case("missing_config_file_with_overrides",
         ("rlef_jax.train", "--config=configs/no_such_config.py", "--workdir={wd}",
          "--config.rl.kl_coef=1"), "configs/no_such_config.py does not exist"),
    Case("malformed_value", _train("--config.rl.kl_coef=abc"), "--config.rl.kl_coef=abc"),
    Case("invalid_value", _train("--config.rl.kl_coef=-1"), "config.rl.kl_coef must be >= 0"),
    Case("workdir_is_a_file", ("rlef_jax.train", f"--config={TINY}", "--workdir={tmp}/a_file"),
         "--workdir={tmp}/a_file exists and is not a directory"),
    Case("workdir_under_a_file", ("rlef_jax.train", f"--config={TINY}", "--workdir={tmp}/a_file/run"),
         "{tmp}/a_file is not a directory"),
    Case("workdir_url_of_an_unknown_scheme",
         ("rlef_jax.train", f"--config={TINY}", "--workdir=memory://bucket/run"),
         "--workdir=memory://bucket/run: unsupported URL scheme 'memory'; use a local path or gs://"),
    Case("unreadable_workdir", ("rlef_jax.train", f"--config={TINY}", "--workdir={tmp}/locked"),
         "--workdir={tmp}/locked: this user cannot read and write it",
         skip_as_root="root reads and writes a chmod 000 directory (check_workdir's os.access test "
                      "covers it in-process: test_unreadable_workdir_is_refused)"),
    Case("missing_tokenizer", _train("--config.tokenizer.path=no/such/tokenizer"),
         "config.tokenizer.path='no/such/tokenizer': no such directory"),
    Case("missing_init_checkpoint", _train("--config.model.init_checkpoint=no/such/checkpoint"),
         "config.model.init_checkpoint='no/such/checkpoint': no such directory"),
    Case("tokenizer_vocabulary_differs", _train("--config.model.vocab_size=512"),
         "has 491 tokens but config.model.vocab_size is 512"),
    Case("hf_checkpoint_vocabulary_differs", _train("--config.model.init_checkpoint={tmp}/hf_vocab512"),
         "init_checkpoint='{tmp}/hf_vocab512' has vocab_size=512"),
    Case("orbax_checkpoint_vocabulary_differs",
         _train("--config.model.init_checkpoint={tmp}/orbax_vocab512"),
         "init_checkpoint='{tmp}/orbax_vocab512': parameter ['embed']['embedding'] has shape (512, 128)"),
    Case("truncated_parquet", _train("--config.data.name=code_contests", "--config.data.source_dir={tmp}/cc_truncated",
                                     "--config.data.data_dir={tmp}/tfds_truncated", *NOT_SYNTHETIC),
         "{tmp}/cc_truncated/data/train-00000-of-00001.parquet: not a readable parquet file"),
    Case("corrupted_parquet", _train("--config.data.name=code_contests", "--config.data.source_dir={tmp}/cc_corrupted",
                                     "--config.data.data_dir={tmp}/tfds_corrupted", *NOT_SYNTHETIC),
         "{tmp}/cc_corrupted/data/train-00000-of-00001.parquet: not a readable parquet file"),
    Case("mbpp_row_without_tests", _train("--config.data.name=mbpp", "--config.data.source_dir={tmp}/mbpp",
                                          "--config.data.data_dir={tmp}/tfds_mbpp", *NOT_SYNTHETIC),
         "{tmp}/mbpp/mbpp.jsonl line 1: MBPP row lacks ['test_list']"),
    Case("evaluate_without_checkpoint",
         ("rlef_jax.evaluate", f"--config={TINY}", "--workdir={tmp}/empty_workdir"),
         "no train checkpoint in {tmp}/empty_workdir/checkpoints"),
    Case("evaluate_missing_params_directory",
         ("rlef_jax.evaluate", f"--config={TINY}", "--workdir={wd}", "--checkpoint=no/such/params"),
         "--checkpoint=no/such/params: neither a step"),
    Case("convert_missing_source",
         ("rlef_jax.convert", "--direction=hf_to_orbax", "--src={tmp}/no_such_hf", "--dst={wd}"),
         "{tmp}/no_such_hf/config.json not found"),
]

CC_SCHEMA_ROW = {
    "name": "p", "description": "Print x + 1.\n",
    "public_tests": {"input": ["1\n"], "output": ["2\n"]},
    "private_tests": {"input": ["3\n"], "output": ["4\n"]},
    "generated_tests": {"input": [], "output": []},
    "solutions": {"language": [3], "solution": ["print(int(input()) + 1)\n" * 20]},
    "incorrect_solutions": {"language": [3], "solution": ["print(0)\n"]},
    "time_limit": {"seconds": 2, "nanos": 0}, "memory_limit_bytes": 256 << 20,
    "difficulty": 1, "cf_rating": 800, "cf_tags": ["math"],
}


def _write_code_contests(root: pathlib.Path, damage) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq
  (root / "data").mkdir(parents=True)
  table = pa.Table.from_pylist([dict(CC_SCHEMA_ROW, name=f"p{i}") for i in range(200)])
  for split in ("train", "valid", "test"):
    pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
  shard = root / "data" / "train-00000-of-00001.parquet"
  shard.write_bytes(damage(shard.read_bytes()))


def _write_orbax_vocab512(path: pathlib.Path) -> None:
  """A params directory of the tiny preset with its default 512-token vocabulary (the synthetic
  tokenizer, and so configs/tiny.py, has 491)."""
  import flax.linen as nn
  import jax
  import numpy as np
  from rlef_jax import checkpoint, config as config_lib, model, sharding
  spec = importlib_tiny_config()
  with spec.model.unlocked():
    spec.model.vocab_size = 512
  abstract = nn.unbox(sharding.abstract_params(model.Llama(config_lib.llama_config(spec.model))))
  checkpoint.save_params(path, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract),
                         metadata={"what": "test"})


def importlib_tiny_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny_config_cli_errors", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _inputs(tmp: pathlib.Path) -> None:
  (tmp / "a_file").write_text("not a directory\n")
  (tmp / "locked").mkdir()
  (tmp / "locked").chmod(0)
  (tmp / "empty_workdir").mkdir()
  hf = tmp / "hf_vocab512"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
      "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
      "max_position_embeddings": 512, "tie_word_embeddings": False}))
  _write_code_contests(tmp / "cc_truncated", lambda b: b[:len(b) // 2])
  # 256 bytes overwritten a third of the way in: inside the first column chunk, the footer intact.
  _write_code_contests(tmp / "cc_corrupted", lambda b: b[:len(b) // 3] + b"\xff" * 256 + b[len(b) // 3 + 256:])
  (tmp / "mbpp").mkdir()
  with open(tmp / "mbpp" / "mbpp.jsonl", "w") as f:  # an MBPP row without its tests
    f.write(json.dumps({"task_id": 1, "text": "Write a function.", "code": "def f():\n  pass\n"}) + "\n")
  _write_orbax_vocab512(tmp / "orbax_vocab512")


def _run(case: Case, tmp: pathlib.Path) -> dict:
  cwd = tmp / "cwd" / case.name
  cwd.mkdir(parents=True)
  workdir = tmp / "workdirs" / case.name
  fill = lambda s: s.replace("{tmp}", str(tmp)).replace("{wd}", str(workdir))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-m", *map(fill, case.args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=240)
  return {"proc": proc, "cwd": cwd, "workdir": workdir, "culprit": fill(case.culprit)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli_errors")
  _inputs(tmp)
  before = {p for p in tmp.rglob("*")}
  cases = [c for c in CASES if not (c.skip_as_root and os.geteuid() == 0)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    out = dict(zip((c.name for c in cases), pool.map(lambda c: _run(c, tmp), cases)))
  (tmp / "locked").chmod(0o700)
  return tmp, before, out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_line_naming_the_culprit(case, results):
  if case.skip_as_root and os.geteuid() == 0:
    pytest.skip(case.skip_as_root)
  tmp, before, out = results
  r = out[case.name]
  proc = r["proc"]
  report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
  assert proc.returncode == 2, report
  assert "Traceback" not in proc.stderr, report
  # The last line (progress bars end theirs with a carriage return, not a newline).
  last = re.split(r"[\r\n]", proc.stderr.strip())[-1].strip()
  assert last.startswith("error: "), report
  assert r["culprit"] in last, report
  assert not r["workdir"].exists(), report
  assert list(r["cwd"].iterdir()) == [], report


def test_nothing_is_written(results):
  """No case wrote a file anywhere under the inputs: no workdir content, no half-prepared dataset
  (TFDS leaves empty folders in a data_dir, and `<name>/.config/metadata.json`, its note of a
  builder's named configs), nothing in the working directories."""
  tmp, before, _ = results
  written = sorted(p for p in set(tmp.rglob("*")) - before
                   if not p.is_dir() and p.parent.name != ".config")
  assert written == []


def test_unreadable_workdir_is_refused(tmp_path, monkeypatch):
  """check_workdir refuses a directory this user cannot use (the CLI case above cannot run as root)."""
  from rlef_jax import commands, errors
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
  with pytest.raises(errors.UserError, match="this user cannot read and write it"):
    commands.check_workdir(str(tmp_path))


def test_a_bug_keeps_its_traceback():
  """Only expected errors are shortened: anything else propagates (here, through cli.guard)."""
  from rlef_jax import cli

  def main(argv):
    raise KeyError("a bug")
  with pytest.raises(KeyError, match="a bug"):
    cli.guard(main)(["prog"])
