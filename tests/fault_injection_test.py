"""Faults injected for real (issue 14): a full disk, a sandbox killed mid-round, a trainer killed
mid-save. Each test makes the fault happen (a file size limit, SIGKILL from outside) and checks what
survives, instead of calling the code that should cope with it.

A full disk is injected with RLIMIT_FSIZE in a child process: a write past the limit fails with EFBIG
(Python ignores SIGXFSZ), as a write to a full disk fails with ENOSPC, from deep inside whatever
writes (tensorstore in orbax's background thread, a plain file). `/dev/full` gives a real ENOSPC where
one file descriptor is enough.
"""
import errno
import io
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlef_jax import checkpoint
from rlef_jax import cli
from rlef_jax import errors
from rlef_jax import metrics as metrics_lib
from rlef_jax import train as train_lib
from train_test import OVERRIDES, _checkpoint_state, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_SPACE = "(the disk is full, or a disk quota or file size limit is reached)"

# Runs `python ARGS...` with a soft file size limit of LIMIT bytes (the hard limit stays unlimited, so
# the sandboxes can still set their tests' own limits): `python -c LIMITED LIMIT ARGS...`.
LIMITED = ("import os, resource, sys\n"
           "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))\n"
           "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n")


def _run_limited(limit, args, **kwargs):
  return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, **kwargs)


def _last_line(text):
  """The last line of `text` (progress bars end theirs with a carriage return)."""
  return re.split(r"[\r\n]", text.strip())[-1].strip()


# ---------------------------------------------------------------------------------------------
# A full disk: one line naming the file, exit status 74, earlier checkpoints intact


def test_a_full_disk_ends_a_command_in_one_line_naming_the_file(capsys):
  """A real ENOSPC (writing /dev/full) through `cli.guard`, the wrapper of every command."""
  def main(argv):
    with errors.writing("/dev/full"), open("/dev/full", "w") as f:
      f.write("x")
  with pytest.raises(SystemExit) as exit_info:
    cli.guard(main)(["prog"])
  assert exit_info.value.code == cli.NO_SPACE_EXIT_STATUS == 74
  assert capsys.readouterr().err == (
      f"error: no space left writing /dev/full: No space left on device {NO_SPACE}; free some space "
      "and run the command again\n")


def test_a_full_disk_is_reported_even_where_no_path_is_known(capsys):
  def main(argv):
    with open("/dev/full", "wb", buffering=0) as f:  # a failed write or flush names no file
      f.write(b"x")
  with pytest.raises(SystemExit) as exit_info:
    cli.guard(main)(["prog"])
  assert exit_info.value.code == cli.NO_SPACE_EXIT_STATUS
  assert capsys.readouterr().err.startswith("error: no space left writing a file: No space left on device")


def test_other_os_errors_keep_their_traceback():
  def main(argv):
    raise PermissionError(errno.EACCES, "Permission denied", "/some/file")
  with pytest.raises(PermissionError):
    cli.guard(main)(["prog"])


def test_tensorstore_errors_are_recognised_by_their_os_error_code():
  """Orbax writes arrays with tensorstore, which raises ValueError, not OSError (the message orbax 0.12
  gives under a file size limit, with the code of a full disk)."""
  failure = ValueError(
      'OUT_OF_RANGE: Error writing "w/0.0" in OCDBT database at local file "/c/2.orbax-checkpoint-tmp/'
      'state/ocdbt.process_0/": Failed writing: "/c/2.orbax-checkpoint-tmp/state/ocdbt.process_0/d/ab": '
      "Failed to write 869435 bytes to file 4: No space left on device [os_error_code='28']")
  found = errors.out_of_space(failure)
  assert (found.errno, found.filename) == (errno.ENOSPC, "/c/2.orbax-checkpoint-tmp/state/ocdbt.process_0/d/ab")
  assert errors.out_of_space(ValueError("[os_error_code='13'] Permission denied")) is None


ASYNC_SAVE = """
import jax
from absl import logging
from rlef_jax import checkpoint, cli

def main(argv):
  logging.set_verbosity(logging.WARNING)  # as the commands do: orbax logs every file at INFO
  ckpt = checkpoint.Checkpointer(argv[1], max_to_keep=None)
  ckpt.save(2, {f"w{i}": jax.random.normal(jax.random.key(i), (64, 256)) for i in range(16)})
  print("save returned", flush=True)  # the arrays are written in orbax's background thread
  ckpt.wait()

cli.run(main)
"""


def _state(step):
  """16 arrays of 64 KB: many concurrent writes, as in a train state."""
  return {f"w{i}": jax.random.normal(jax.random.key(100 * step + i), (64, 256)) for i in range(16)}


def test_an_asynchronous_save_out_of_space_names_the_file_and_keeps_the_previous_step(tmp_path):
  """The failure happens in orbax's background thread and surfaces at `wait` as one line; the
  previous step restores, verified, and the lost step can be saved again once there is space."""
  root = tmp_path / "ckpt"
  with checkpoint.Checkpointer(root, max_to_keep=None) as ckpt:
    ckpt.save(1, _state(1), extra={"position": 1})
    ckpt.wait()
  # 64 KB arrays of random float32 cannot fit under 32 KB; the step's small metadata files do.
  proc = _run_limited(32 << 10, ["-c", ASYNC_SAVE, str(root)])
  report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
  assert proc.returncode == cli.NO_SPACE_EXIT_STATUS, report
  assert "save returned" in proc.stdout, report
  # Only the line: not orbax's logs of its failed threads, nor the writes it left in flight.
  assert len(proc.stderr.strip().splitlines()) == 1, report
  last = _last_line(proc.stderr)
  assert re.fullmatch(
      rf"error: no space left writing {re.escape(str(root))}/2\.orbax-checkpoint-tmp/\S+: File too large "
      rf"{re.escape(NO_SPACE)}; checkpoint step 2 in {re.escape(str(root))} was not saved; the newest "
      r"complete checkpoint, step 1, is intact and a rerun resumes from it; free some space and run the "
      r"command again", last), report
  assert (root / "2.orbax-checkpoint-tmp").is_dir() and not (root / "2").exists()

  with checkpoint.Checkpointer(root, max_to_keep=None) as ckpt:
    assert ckpt.all_steps() == [1]
    restored, extra = ckpt.restore(None, checkpoint.abstract_like(_state(0)))  # manifest verified
    assert extra == {"position": 1}
    for key, value in _state(1).items():
      np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value))
    ckpt.save(2, _state(2), extra={"position": 2})
    ckpt.wait()
    assert ckpt.restore(2, checkpoint.abstract_like(_state(0)))[1] == {"position": 2}


METRICS = """
import io
from rlef_jax import cli, metrics

def main(argv):
  with metrics.MetricsWriter(argv[1], total_steps=100, resume_step=int(argv[2]),
                             stream=io.StringIO()) as writer:
    for step in range(int(argv[2]) + 1, 101):
      writer.write(step, {"reward/task_mean": 0.25, "value_loss": 1.5})
      print("wrote", step, flush=True)

cli.run(main)
"""


def test_metrics_out_of_space_names_the_file_and_leaves_whole_lines(tmp_path):
  """A resumed run whose disk fills up at the next metrics line: one line naming metrics.jsonl, and
  nothing left in a buffer for closing the writer to fail on again (and hide the first failure)."""
  lines = [json.dumps({"step": s, "reward/task_mean": 0.5, "value_loss": 1.0}) + "\n" for s in range(1, 41)]
  path = tmp_path / metrics_lib.JSONL_NAME
  path.write_text("".join(lines))
  limit = path.stat().st_size + 20  # the kept lines are rewritten (same size); step 41's line is not
  proc = _run_limited(limit, ["-c", METRICS, str(tmp_path), "40"])
  report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
  assert proc.returncode == cli.NO_SPACE_EXIT_STATUS, report
  assert "wrote" not in proc.stdout, report
  assert proc.stderr.strip().splitlines() == [
      f"error: no space left writing {path}: File too large {NO_SPACE}; free some space and run the "
      "command again"], report
  # The 40 kept lines and a cut-off line, which the next resume drops.
  assert path.read_text().startswith("".join(lines)) and path.stat().st_size == limit
  with metrics_lib.MetricsWriter(str(tmp_path), total_steps=100, resume_step=40, stream=io.StringIO()) as w:
    w.write(41, {"reward/task_mean": 0.25})
  assert [l["step"] for l in metrics_lib.read_jsonl(path)] == list(range(1, 42))


# ---------------------------------------------------------------------------------------------
# The real trainer (`python -m rlef_jax.train`, tiny config shrunk as in train_test.py)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The synthetic dataset, prepared here once: the children only read it (a file size limit would
  stop them preparing it)."""
  path = tmp_path_factory.getbasetemp() / "tfds"
  train_lib.data_source(tiny_config(path), "train")
  return path


def _train_command(workdir, data_dir, **overrides):
  flags = {**OVERRIDES, "data.data_dir": data_dir, "warmstart.steps": 1, **overrides}
  return ["-m", "rlef_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in flags.items())]


def _start(args, log):
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=open(log, "w"),
                          stderr=subprocess.STDOUT)


def _finish(proc, log, timeout=900):
  try:
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return pathlib.Path(log).read_text()


@pytest.fixture(scope="module")
def one_update(tmp_path_factory, data_dir):
  """A finished one-update run of the real trainer: reference params, checkpoint 1, one metrics line."""
  workdir = tmp_path_factory.mktemp("one_update") / "run"
  log = workdir.parent / "run.log"
  proc = _start(_train_command(workdir, data_dir, **{"train.num_updates": 1}), log)
  text = _finish(proc, log)
  assert proc.returncode == 0, text
  return workdir


def _resume_out_of_space(one_update, tmp_path, data_dir, limit):
  """Resumes a copy of `one_update` for a second update under a file size limit of `limit` bytes."""
  workdir = tmp_path / "run"
  shutil.copytree(one_update, workdir)
  proc = _run_limited(limit, _train_command(workdir, data_dir, **{"train.num_updates": 2}))
  report = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
  assert proc.returncode == cli.NO_SPACE_EXIT_STATUS, report
  assert "Traceback" not in proc.stderr, report
  assert f"[train] resumed from step 1 in {workdir}" in proc.stdout, report
  return workdir, _last_line(proc.stderr), report


def _assert_step_1_intact(workdir):
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    assert ckpt.all_steps() == [1]
    ckpt.check(1)  # every file against its sha256 manifest
  step, state = _checkpoint_state(workdir)
  assert step == 1 and any("policy_params" in k for k in state)


@pytest.mark.slow  # about 2 min with the one-update run it shares
def test_the_trainer_out_of_space_in_a_checkpoint_save(tmp_path, one_update, data_dir):
  """The disk fills up while orbax writes checkpoint 2 in its background thread: the trainer ends
  with one line naming the file and the steps lost and kept, and checkpoint 1 stays intact."""
  step_1 = [p for p in (one_update / "checkpoints" / "1").rglob("*") if p.is_file()]
  data = [p for p in step_1 if "/d/" in str(p)]
  # What the resumed run writes besides checkpoint data (reference params are only read).
  others = [p for p in step_1 if p not in data] + [
      p for p in one_update.rglob("*") if p.is_file() and p.relative_to(one_update).parts[0] not in
      ("checkpoints", "reference_params")]
  limit = max(p.stat().st_size for p in data) // 2
  assert limit > 2 * max(p.stat().st_size for p in others)  # only checkpoint data can reach it
  workdir, last, report = _resume_out_of_space(one_update, tmp_path, data_dir, limit)
  checkpoints = re.escape(str(workdir / "checkpoints"))
  assert re.fullmatch(
      rf"error: no space left writing {checkpoints}/2\.orbax-checkpoint-tmp/\S+: File too large "
      rf"{re.escape(NO_SPACE)}; checkpoint step 2 in {checkpoints} was not saved; the newest complete "
      r"checkpoint, step 1, is intact and a rerun resumes from it; free some space and run the command "
      r"again", last), report
  _assert_step_1_intact(workdir)


@pytest.mark.slow  # about 1 min with the one-update run it shares
def test_the_trainer_out_of_space_in_the_metrics(tmp_path, one_update, data_dir):
  """The disk fills up at the next metrics line: one line naming metrics.jsonl; checkpoint 1 intact."""
  limit = (one_update / metrics_lib.JSONL_NAME).stat().st_size + 100  # one line is ~1.3 KB
  workdir, last, report = _resume_out_of_space(one_update, tmp_path, data_dir, limit)
  assert last == (f"error: no space left writing {workdir / metrics_lib.JSONL_NAME}: File too large "
                  f"{NO_SPACE}; free some space and run the command again"), report
  _assert_step_1_intact(workdir)
