"""Faults injected for real (issue 14): a full disk, a sandbox killed mid-round, a trainer killed
mid-save. Each test makes the fault happen (a file size limit, SIGKILL from outside) and checks what
survives, instead of calling the code that should cope with it.

A full disk is injected with RLIMIT_FSIZE in a child process: a write past the limit fails with EFBIG
(Python ignores SIGXFSZ), as a write to a full disk fails with ENOSPC, from deep inside whatever
writes (tensorstore in orbax's background thread, a plain file). `/dev/full` gives a real ENOSPC where
one file descriptor is enough.
"""
import concurrent.futures
import ctypes
import errno
import io
import json
import os
import pathlib
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from rlef_jax import checkpoint
from rlef_jax import cli
from rlef_jax import env as env_lib
from rlef_jax import errors
from rlef_jax import experiment
from rlef_jax import metrics as metrics_lib
from rlef_jax import model as model_lib
from rlef_jax import rollout as rollout_lib
from rlef_jax import sampler as sampler_lib
from rlef_jax import synthetic
from rlef_jax.execution import ExecutionPool, Verdict
from train_test import OVERRIDES, _checkpoint_state, assert_same_run, tiny_config

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
# A sandbox killed mid-round: its tests fail, the round completes, the pool recovers

SLEEPER = "rlef_sleeper"  # /proc/PID/comm of a test process that waits to be found (15 chars at most)


def _sleeper(program, seconds):
  """`program` after a pause, under a name the test can find it by from outside the sandbox."""
  return (f"import ctypes, time\nctypes.CDLL(None).prctl(15, {SLEEPER.encode()!r}, 0, 0, 0)\n"  # PR_SET_NAME
          f"time.sleep({seconds})\n" + program)


def _pids_named(name):
  pids = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/comm") as f:
          if f.read().strip() == name:
            pids.append(int(entry))
      except OSError:
        pass
  return pids


def _parent(pid):
  try:
    with open(f"/proc/{pid}/status") as f:
      return int(next(l for l in f if l.startswith("PPid:")).split()[1])
  except (OSError, StopIteration):
    return 0


def _sandbox_of(pid):
  """This process's child (the sandbox: bwrap, or the runner) that `pid` descends from, or None."""
  me = os.getpid()
  while pid > 1:
    parent = _parent(pid)
    if parent == me:
      return pid
    pid = parent
  return None


class _SandboxKiller(threading.Thread):
  """SIGKILLs, from outside, the sandbox of every test process named `SLEEPER` (polling /proc)."""

  def __init__(self):
    super().__init__(daemon=True)
    self.done = threading.Event()
    self.killed = {}  # sandbox pid -> the sleeper found in it

  def run(self):
    while not self.done.is_set():
      for pid in _pids_named(SLEEPER):
        box = _sandbox_of(pid)
        if box is not None and box not in self.killed:
          os.kill(box, signal.SIGKILL)
          self.killed[box] = pid
      self.done.wait(0.02)


def _scripted_generate(responses):
  """Stands in for `sampler.generate`: row b answers `responses[b]` (token ids) every turn. The rollout
  engine around it (chunks, the environment, the pool's jobs, feedback, final scoring) is the real one."""
  def generate(params, cache, new_BxL, num_new_B, keys, *, max_new_tokens, pad_id, active_B, **unused):
    del params, new_BxL, keys, max_new_tokens, unused
    active_B, num_new_B = np.asarray(active_B), np.asarray(num_new_B)
    rows = [responses[b] if active_B[b] else [] for b in range(len(active_B))]
    tokens_BxT = np.full((len(rows), max(map(len, rows))), pad_id, np.int32)
    for b, row in enumerate(rows):
      tokens_BxT[b, :len(row)] = row
    logp_BxT = np.zeros(tokens_BxT.shape, np.float32)
    cache = cache.replace(lengths_B=cache.lengths_B + num_new_B)  # the response is fed with the next chunk
    return sampler_lib.SampleOutput(tokens_BxT, logp_BxT, logp_BxT, np.array([len(r) for r in rows]),
                                    active_B, np.zeros_like(active_B), cache)
  return generate


def _run_round(engine, problems, seed):
  """`engine.run` with a time limit: a pool that does not recover fails the test instead of hanging."""
  one = concurrent.futures.ThreadPoolExecutor(1)
  try:
    return one.submit(engine.run, None, problems, jax.random.key(seed)).result(timeout=300)[0]
  finally:
    one.shutdown(wait=False)


def test_a_sandbox_killed_mid_round_fails_only_its_tests_and_the_pool_recovers(synthetic_tok, monkeypatch):
  """Episodes whose programs would pass (a pause, then a correct solution) have their sandboxes
  SIGKILLed from outside while their tests run: the round completes without an exception, their tests
  are recorded as failures ("sandbox crashed"), the other episodes of the round pass, no test process
  is left behind, and the next round on the same pool passes, the same slow programs included."""
  tok = synthetic_tok
  records = synthetic.generate_problems(4, seed=3)
  problems = [env_lib.Problem.from_record("synthetic", r) for r in records]
  right = [synthetic.response_text(r["solutions"][0]) for r in records]
  slow = [synthetic.response_text(_sleeper(r["solutions"][0], 0.5)) for r in records]
  ids = lambda text: [*tok.encode(text), tok.eot_id]

  llama_config = model_lib.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                       num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                       rope_theta=10000.0, max_position_embeddings=2048)
  env_config = env_lib.default_env_config()
  env_config.max_turns = 2
  settings = rollout_lib.RolloutSettings(max_new_tokens=128, max_context_length=2048, temperature=1.0,
                                         top_p=1.0, num_groups=1)
  monkeypatch.setattr(rollout_lib.sampler_lib, "prepare", lambda params, config, mesh=None: (params, None))

  with ExecutionPool(workers=2) as pool:
    engine = rollout_lib.RolloutEngine(None, llama_config, tok, pool, env_config, settings)
    # Round 1: problems 0 and 2 answer slowly and are killed; 1 and 3 answer at once.
    monkeypatch.setattr(rollout_lib.sampler_lib, "generate", _scripted_generate(
        [ids(slow[0]), ids(right[1]), ids(slow[2]), ids(right[3])]))
    killer = _SandboxKiller()
    killer.start()
    try:
      round_1 = _run_round(engine, problems, 0)
    finally:
      killer.done.set()
      killer.join()

    # Two turns of public tests and the final tests of each slow episode: six jobs, each killed.
    assert len(killer.killed) == 6, killer.killed
    for k in (0, 2):
      episode = round_1[k].episode
      assert not episode.solved and episode.task_rewards[-1] == env_config.failure_reward
      jobs = [t.public_result for t in episode.turns] + [episode.final_result]
      assert len(jobs) == 3
      for job in jobs:
        assert not job.passed
        assert any(c.verdict == Verdict.RUNTIME_ERROR and c.error == "The sandbox crashed while running "
                   "this test." for c in job.cases), job
      assert "The sandbox crashed" in episode.turns[0].feedback
    for k in (1, 3):
      assert round_1[k].episode.solved and len(round_1[k].episode.turns) == 1
    left = lambda: set(killer.killed.values()) & set(_pids_named(SLEEPER))
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
      time.sleep(0.1)
    assert not left(), "test processes of killed sandboxes are still running"

    # Round 2, same pool, nothing killed: every episode passes, a slow one included.
    monkeypatch.setattr(rollout_lib.sampler_lib, "generate", _scripted_generate(
        [ids(slow[0]), ids(right[1]), ids(right[2]), ids(right[3])]))
    round_2 = _run_round(engine, problems, 1)
    assert [r.episode.solved for r in round_2] == [True] * 4


# ---------------------------------------------------------------------------------------------
# The real trainer (`python -m rlef_jax.train`, tiny config shrunk as in train_test.py)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The synthetic dataset, prepared here once: the children only read it (a file size limit would
  stop them preparing it)."""
  path = tmp_path_factory.getbasetemp() / "tfds"
  experiment.data_source(tiny_config(path), "train")
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


_IN_CREATE = 0x100


def _created(directory, proc):
  """Names created in `directory` (inotify, so that none is missed however briefly it exists), as
  they are created, until `proc` ends."""
  libc = ctypes.CDLL(None, use_errno=True)
  fd = libc.inotify_init1(os.O_CLOEXEC)
  if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(directory), _IN_CREATE) < 0:
    raise OSError(ctypes.get_errno(), f"inotify on {directory}")
  try:
    while proc.poll() is None:
      if not select.select([fd], [], [], 0.5)[0]:
        continue
      data, i = os.read(fd, 1 << 16), 0
      while i < len(data):
        _, _, _, size = struct.unpack_from("iIII", data, i)
        yield data[i + 16:i + 16 + size].rstrip(b"\0").decode()
        i += 16 + size
  finally:
    os.close(fd)


def _stopped(pid, timeout=10):
  """Waits until every thread of `pid` is stopped (SIGSTOP is delivered asynchronously)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
      try:
        with open(f"/proc/{pid}/task/{task}/stat") as f:
          states.append(f.read().rsplit(")", 1)[1].split()[0])
      except OSError:
        pass
    if states and all(s in "tT" for s in states):
      return
    time.sleep(0.001)
  raise AssertionError(f"process {pid} did not stop")


def _sigkill_during_a_save(proc, checkpoints, first_step):
  """SIGKILLs the trainer `proc` while orbax writes checkpoint `first_step` or a later one, and
  returns that step.

  The moment orbax creates the step's temporary directory `STEP.orbax-checkpoint-tmp` the trainer is
  stopped (SIGSTOP), and killed if the save is still under way (no `STEP` yet; a save takes ~1 s
  here, so this is the case unless the machine is very busy), else resumed to try the next save."""
  deadline = time.monotonic() + 600
  while not checkpoints.is_dir():
    assert proc.poll() is None and time.monotonic() < deadline, "the trainer ended before its first save"
    time.sleep(0.05)
  for name in _created(checkpoints, proc):
    match = re.fullmatch(r"(\d+)\.orbax-checkpoint-tmp", name)
    if not match or int(match.group(1)) < first_step:
      continue
    step = int(match.group(1))
    os.kill(proc.pid, signal.SIGSTOP)
    _stopped(proc.pid)
    if not (checkpoints / str(step)).exists():
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      return step
    os.kill(proc.pid, signal.SIGCONT)
  raise AssertionError("the trainer ended without a save to kill")


@pytest.mark.slow  # about 4 min on 2 busy cores: three trainer processes, each compiling everything
def test_a_trainer_killed_during_a_checkpoint_save_resumes_to_the_same_result(tmp_path, data_dir):
  """SIGKILL of the real trainer while it writes a checkpoint: the next start resumes from the last
  complete one, and the run ends with the parameters, optimizer state, metrics and final evaluation
  of a run that was never interrupted."""
  args = dict(data_dir=data_dir, **{"train.num_updates": 4, "train.checkpoint_every": 1})
  straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
  straight = _start(_train_command(straight_dir, **args), tmp_path / "straight.log")
  killed = _start(_train_command(killed_dir, **args), tmp_path / "killed.log")
  try:
    step = _sigkill_during_a_save(killed, killed_dir / "checkpoints", first_step=2)
  finally:
    if killed.poll() is None:
      killed.kill()
  text = _finish(killed, tmp_path / "killed.log")
  assert killed.returncode == -signal.SIGKILL, text
  checkpoints = killed_dir / "checkpoints"
  assert (checkpoints / f"{step}.orbax-checkpoint-tmp").is_dir() and not (checkpoints / str(step)).exists()
  assert (checkpoints / str(step - 1) / checkpoint.MANIFEST).is_file()

  resumed = _start(_train_command(killed_dir, **args), tmp_path / "resumed.log")
  text = _finish(resumed, tmp_path / "resumed.log")
  assert resumed.returncode == 0, text
  assert f"[train] resumed from step {step - 1} in {killed_dir}" in text
  text = _finish(straight, tmp_path / "straight.log")
  assert straight.returncode == 0, text

  assert_same_run(killed_dir, straight_dir, steps=4)
  final = lambda d: {k: v for k, v in json.loads((d / "eval" / "step_4_final.json").read_text()).items()
                     if not k.endswith("seconds")}
  assert final(killed_dir) == final(straight_dir)


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
