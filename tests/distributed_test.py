"""Tests for rlef_jax.distributed and experiments/tpu/launch.sh.

The multi-process tests run in 2 CPU processes (2 devices each, gloo collectives, coordinator on
127.0.0.1): `ppo_update.make_update_step` on a global (data=1, fsdp=2, tensor=2) mesh against the same steps
on one device in the pytest process; one trainer round (rollouts with the real sampler and executor,
`round_batch.make_round_batch`, a PPO update) on a (data=2, fsdp=2) mesh against the same round in one
4-device process; and `train.train` stopped and resumed in 2 processes.
"""

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from rlef_jax import distributed, metrics, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess", "ppo_step_worker.py")
TRAIN_WORKER = os.path.join(REPO, "tests", "multiprocess", "train_worker.py")
LAUNCH = os.path.join(REPO, "experiments", "tpu", "launch.sh")


# ---------------------------------------------------------------------------------------------
# plan(): where the process layout comes from


def _plan(fields=None, env=None, tpu=False):
  return distributed.plan(fields, environ=env or {}, on_cloud_tpu=tpu)


def test_one_process_without_any_hint():
  assert _plan() == distributed.Plan("single")
  assert _plan({"cluster": "auto"}, env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).source == "single"


def test_explicit_fields_win_over_environment():
  env = {"RLEF_COORDINATOR": "other:1", "RLEF_NUM_PROCESSES": "8", "RLEF_PROCESS_ID": "5"}
  got = _plan({"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2,
               "local_device_ids": "0,1"}, env=env, tpu=True)
  assert got == distributed.Plan("config", "10.0.0.1:1234", 4, 2, (0, 1))


def test_environment_variables():
  env = {"RLEF_COORDINATOR": "host-0:8476", "RLEF_NUM_PROCESSES": "2", "RLEF_PROCESS_ID": "1",
         "RLEF_LOCAL_DEVICE_IDS": "3"}
  assert _plan(env=env) == distributed.Plan("env", "host-0:8476", 2, 1, (3,))
  assert _plan({"local_device_ids": "0,1"}, env=env).local_device_ids == (0, 1)
  one = {"RLEF_COORDINATOR": "h:1", "RLEF_NUM_PROCESSES": "1", "RLEF_PROCESS_ID": "0"}
  assert _plan(env=one).source == "single"


def test_slurm_and_tpu_are_left_to_jax_detection():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "8",
           "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
  assert _plan(env=slurm) == distributed.Plan("slurm")
  per_node = dict(slurm, RLEF_LOCAL_DEVICE_IDS="0,1,2,3")
  assert _plan(env=per_node) == distributed.Plan("slurm", local_device_ids=(0, 1, 2, 3))
  assert _plan(tpu=True) == distributed.Plan("tpu")
  assert _plan({"cluster": "none"}, env=slurm, tpu=True).source == "single"


@pytest.mark.parametrize("fields, env, match", [
    ({"coordinator_address": "h:1"}, {},
     "config.distributed.num_processes, config.distributed.process_id not set"),
    (None, {"RLEF_COORDINATOR": "h:1", "RLEF_NUM_PROCESSES": "2"}, "RLEF_PROCESS_ID not set"),
    (None, {"RLEF_COORDINATOR": "h:1", "RLEF_NUM_PROCESSES": "two", "RLEF_PROCESS_ID": "0"},
     "RLEF_NUM_PROCESSES must be an integer, got 'two'"),
    (None, {"RLEF_COORDINATOR": "h", "RLEF_NUM_PROCESSES": "2", "RLEF_PROCESS_ID": "0"},
     "RLEF_COORDINATOR must be 'host:port'"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {},
     r"config.distributed.process_id=2 must be in \[0, config.distributed.num_processes=2\)"),
    ({"local_device_ids": "0;1"}, {}, "local_device_ids must be comma-separated"),
    ({"cluster": "slurm"}, {}, "cluster must be 'auto' or 'none'"),
    ({"coordinator": "h:1"}, {}, "config.distributed.coordinator is not a known field"),
    (None, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM_STEP_NODELIST.*start the trainer with `srun`"),
])
def test_bad_layouts_get_one_clear_error(fields, env, match):
  with pytest.raises(ValueError, match=match):
    _plan(fields, env=env)


def test_initialize_is_a_no_op_in_one_process(monkeypatch):
  for name in list(os.environ):
    if name.startswith(("RLEF_", "SLURM_")):
      monkeypatch.delenv(name)
  assert distributed.initialize(None) == distributed.Plan("single")
  assert not jax.distributed.is_initialized()
  assert jax.process_count() == 1


def test_initialize_after_jax_started_is_an_error(monkeypatch):
  jax.devices()
  monkeypatch.setenv("RLEF_COORDINATOR", "127.0.0.1:1")
  monkeypatch.setenv("RLEF_NUM_PROCESSES", "2")
  monkeypatch.setenv("RLEF_PROCESS_ID", "0")
  with pytest.raises(RuntimeError, match="before any JAX computation"):
    distributed.initialize(None)


def test_local_rows_and_global_batch_in_one_process():
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 1})
  spec = sharding.data_sharding(mesh, 2)
  assert distributed.local_rows(spec, (16, 3)) == slice(0, 16)
  x = np.arange(48).reshape(16, 3)
  out = distributed.global_batch({"x": x}, spec, 16)["x"]
  assert out.sharding == spec and np.array_equal(np.asarray(out), x)
  with pytest.raises(ValueError, match="must supply rows 0:16 .* got 8"):
    distributed.global_batch({"x": x[:8]}, spec, 16)


class _FakeSharding:
  """Two local devices holding rows 0:2 and 4:6: not one block."""

  def addressable_devices_indices_map(self, shape):
    return {"d0": (slice(0, 2), slice(None)), "d1": (slice(4, 6), slice(None))}


def test_local_rows_rejects_scattered_rows():
  with pytest.raises(ValueError, match="non-contiguous rows.*jax.make_mesh"):
    distributed.local_rows(_FakeSharding(), (8, 2))


# ---------------------------------------------------------------------------------------------
# Two CPU processes vs one


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("RLEF_", "SLURM_", "JAX_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), **extra)
  return env


@contextlib.contextmanager
def _started(jobs, tmp_path):
  """Starts every (args, env) job; yields `wait(timeout_s)`, which fails unless all exit with 0.

  On leaving (a failure, the deadline, an exception in the body) any job still running is killed.
  """
  procs = []

  def wait(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs):
      if time.monotonic() > deadline or any(p.returncode not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
    _kill(procs)
    outputs = [(tmp_path / f"job{i}.log").read_text()[-3000:] for i in range(len(procs))]
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), f"return codes {codes} (negative: killed at the " \
        f"{timeout_s}s deadline or after another job failed)\n" + "\n----\n".join(outputs)

  try:
    for i, (args, env) in enumerate(jobs):
      with open(tmp_path / f"job{i}.log", "w") as log:
        procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    yield wait
  finally:
    _kill(procs)


def _kill(procs) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()


def _load_worker():
  spec = importlib.util.spec_from_file_location("ppo_step_worker", WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _params(npz):
  return {k: npz[k] for k in npz.files if k.startswith("param")}


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  one, two = tmp_path / "one", tmp_path / "two"
  python = [sys.executable, WORKER, "--steps", "2", "--out", str(two), "--tensor", "2"]
  jobs = [(python, _child_env(2, RLEF_COORDINATOR=f"127.0.0.1:{port}", RLEF_NUM_PROCESSES="2",
                              RLEF_PROCESS_ID=str(pid))) for pid in range(2)]
  with _started(jobs, tmp_path) as wait:
    _load_worker().run(str(one), steps=2, fsdp=1, tensor=1, devices=jax.devices()[:1])
    wait(timeout_s=240)

  ref = np.load(one / "process_0.npz")
  procs = [np.load(two / f"process_{i}.npz") for i in range(2)]
  assert (int(ref["process_count"]), int(ref["device_count"])) == (1, 1)
  for i, p in enumerate(procs):
    assert str(p["plan_source"]) == "env"
    assert (int(p["process_count"]), int(p["device_count"]), int(p["local_device_count"])) == (2, 4, 2)
    assert list(p["mesh_shape"]) == [1, 2, 2]
    assert list(p["local_rows"]) == [4 * i, 4 * i + 4]  # fsdp spans the processes: half the batch each
    batch_names = [k for k in ref.files if k.startswith("batch_")]
    assert len(batch_names) == 10
    for name in batch_names:
      np.testing.assert_array_equal(p[name], ref[name])  # the global batch is the one-process batch

  names = list(ref["metric_names"])
  assert list(procs[0]["metric_names"]) == names and "policy_loss" in names
  losses = ref["metric_values"][:, names.index("policy_loss")]
  assert losses[0] != losses[1]  # the first step changed the policy
  for p in procs:
    np.testing.assert_allclose(p["metric_values"], ref["metric_values"], rtol=1e-5, atol=1e-6)
  ref_params, params0, params1 = _params(ref), _params(procs[0]), _params(procs[1])
  assert set(ref_params) == set(params0) == set(params1) and len(ref_params) > 10
  for name, want in ref_params.items():
    np.testing.assert_array_equal(params0[name], params1[name])
    np.testing.assert_allclose(params0[name], want, rtol=1e-5, atol=1e-6, err_msg=name)

  logged = metrics.read_jsonl(str(two / "metrics" / "metrics.jsonl"))
  assert [row["step"] for row in logged] == [1, 2]
  for row, values in zip(logged, procs[0]["metric_values"]):
    assert [row[n] for n in names] == pytest.approx(list(values), rel=1e-7)
  assert len(os.listdir(two / "metrics" / "tensorboard")) == 1  # only process 0 writes


def _load_train_worker():
  spec = importlib.util.spec_from_file_location("train_worker", TRAIN_WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def synthetic_data_dir(tmp_path_factory):
  """The synthetic TFDS dataset prepared once here, so that the worker processes only read it."""
  from rlef_jax import experiment
  data_dir = tmp_path_factory.mktemp("tfds")
  experiment.data_source(_load_train_worker().tiny_config(str(data_dir)), "train")
  return str(data_dir)


def _train_jobs(part, out, data_dir, processes, devices):
  port = _free_port()
  args = [sys.executable, TRAIN_WORKER, "--part", part, "--out", str(out), "--data-dir", data_dir]
  if processes == 1:
    return [(args, _child_env(devices))]
  return [(args, _child_env(devices, RLEF_COORDINATOR=f"127.0.0.1:{port}",
                            RLEF_NUM_PROCESSES=str(processes), RLEF_PROCESS_ID=str(pid)))
          for pid in range(processes)]


def test_a_trainer_round_in_two_processes_matches_one_process(tmp_path, synthetic_data_dir):
  one, two = tmp_path / "one", tmp_path / "two"
  jobs = (_train_jobs("round", one, synthetic_data_dir, 1, 4)
          + _train_jobs("round", two, synthetic_data_dir, 2, 2))
  with _started(jobs, tmp_path) as wait:
    wait(timeout_s=400)

  ref = np.load(one / "round_0.npz")
  procs = [np.load(two / f"round_{i}.npz") for i in range(2)]
  assert int(ref["process_count"]) == 1 and int(ref["local_episodes"]) == 8
  batch_names = [k for k in ref.files if k.startswith("batch_")]
  assert "batch_tokens_BxL" in batch_names and "batch_advantages_BxT" in batch_names
  assert ref["batch_tokens_BxL"].shape[0] == 8
  assert ref["batch_policy_mask_BxL"].sum() > 8  # the episodes generated responses
  advantages = ref["batch_advantages_BxT"][ref["batch_turn_mask_BxT"] > 0]
  assert np.std(advantages) > 0.5  # a real PPO step: normalised advantages that differ
  for p in procs:
    assert int(p["process_count"]) == 2 and int(p["local_episodes"]) == 4  # half the round each
    for name in batch_names:
      if name in ("batch_tokens_BxL", "batch_policy_mask_BxL", "batch_turn_id_BxL",
                  "batch_turn_mask_BxT", "batch_task_rewards_BxT", "batch_solved_B",
                  "batch_public_passed_BxT", "batch_valid_code_BxT"):
        # Same tokens sampled, same verdicts: the two-process round is the one-process round.
        np.testing.assert_array_equal(p[name], ref[name], err_msg=name)
      else:
        np.testing.assert_allclose(p[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert list(p["metric_names"]) == list(ref["metric_names"])
    np.testing.assert_allclose(p["metric_values"], ref["metric_values"], rtol=1e-5, atol=1e-6)
    assert list(p["update_names"]) == list(ref["update_names"])
    np.testing.assert_allclose(p["update_values"], ref["update_values"], rtol=1e-4, atol=1e-5)
  ref_params = {k: ref[k] for k in ref.files if k.startswith("param")}
  assert len(ref_params) > 5
  for name, want in ref_params.items():
    np.testing.assert_array_equal(procs[0][name], procs[1][name])
    # Adam divides by sqrt(v): a float-rounding difference in a gradient moves some parameters by a
    # few 1e-6 (observed once: 3e-6 on one of 15712 entries), so the tolerance matches the updates'.
    np.testing.assert_allclose(procs[0][name], want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow  # ~165 s on 2 busy cores (four trainer runs in two processes); the default suite has
# the two-process round (test_a_trainer_round_in_two_processes_matches_one_process) and the
# one-process stop and resume (tests/train_test.py)
def test_train_stops_and_resumes_in_two_processes(tmp_path, synthetic_data_dir):
  jobs = _train_jobs("train", tmp_path, synthetic_data_dir, 2, 2)
  with _started(jobs, tmp_path) as wait:
    wait(timeout_s=500)

  outs = [json.loads((tmp_path / f"train_{i}.json").read_text()) for i in range(2)]
  untimed = [{when: {k: v for k, v in summary.items() if not k.endswith("seconds")}
              for when, summary in out["results"].items()} for out in outs]
  assert untimed[0] == untimed[1]  # every process has the global evaluation
  assert outs[0]["first_call"] == ["before"]  # stopped after update 1, no final evaluation yet
  after = outs[0]["results"]["after"]
  assert after["multi_turn_1at3"]["episodes"] == 3  # 3 problems x 1, split 2 + 1 (padded)
  assert after["single_turn_pass1"]["episodes"] == 9
  workdir = tmp_path / "workdir"
  episodes = (workdir / "eval" / "step_2_final.episodes.jsonl").read_text().splitlines()
  assert len(episodes) == 12
  from rlef_jax import experiment
  config = _load_train_worker().tiny_config(synthetic_data_dir)
  names = [p.name for p in experiment.eval_problems(config, config.eval.split, pool=None)]
  assert len(names) == 3
  # Outcomes come back in problem order although processes ran different blocks.
  assert [json.loads(line)["problem"] for line in episodes] == names + [n for n in names for _ in range(3)]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
  logged = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
  assert [row["step"] for row in logged] == [1, 2]
  for row in logged:
    assert -1.6 <= row["reward/task_mean"] <= 1.0  # -1 or +1, and -0.2 per turn without code
    assert 1.0 <= row["episode/turns"] <= 3.0
  # The checkpoint holds each process's data-iterator state, so each resumes its own stream.
  extra_files = list((workdir / "checkpoints" / "1" / "extra").glob("*"))
  extra = json.loads(next(f for f in extra_files if f.is_file()).read_text())
  assert isinstance(extra["data_iterator"], list) and len(extra["data_iterator"]) == 2
  # Process 0 wrote each step's checksum manifest, covering the other process's files too.
  from rlef_jax import checkpoint as checkpoint_lib
  for step in ("1", "2"):
    assert checkpoint_lib._manifest_problem(str(workdir / "checkpoints" / step)) is None


# ---------------------------------------------------------------------------------------------
# experiments/tpu/launch.sh


def _launch(*args, env=None, check=True):
  result = subprocess.run(["bash", LAUNCH, *args], capture_output=True, text=True, timeout=60,
                          env=env)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _remote_command(argv):
  commands = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  assert len(commands) == 1, argv
  return commands[0]


def test_launch_dry_run_prints_every_command():
  extra = ["--config.rl.kl_coef=0.1", "--config.data.name=it's a name"]
  out = _launch("--dry-run", "--name", "pod", "--zone", "us-east5-a", "--project", "proj",
                "--create", "--spot", "--accelerator-type", "v5p-64", "all",
                "--workdir", "/home/u/bucket/run 1", "--", *extra).stdout
  lines = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
  gcloud = [argv for argv in lines if argv[0] == "gcloud"]
  assert gcloud[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"]
  assert {"--zone=us-east5-a", "--project=proj", "--accelerator-type=v5p-64", "--spot"} <= set(gcloud[0])
  ssh = [argv for argv in gcloud if argv[4] == "ssh"]
  assert ssh and all("--worker=all" in argv and "--zone=us-east5-a" in argv for argv in ssh)
  assert any(argv[4] == "scp" and "--worker=all" in argv for argv in gcloud)

  train = [_remote_command(argv) for argv in ssh if "rlef_jax.train" in _remote_command(argv)]
  assert len(train) == 1
  words = shlex.split(train[0])
  start = words.index("nohup") + 1
  assert words[start:words.index(">")] == [
      ".venv/bin/python", "-m", "rlef_jax.train", "--config=configs/llama8b.py",
      "--workdir=/home/u/bucket/run 1", *extra]
  assert any("jax[tpu]==0.10.2" in _remote_command(argv) for argv in ssh)
  assert any("-r requirements-gcs.txt" in _remote_command(argv) for argv in ssh)


def test_launch_trains_on_a_gs_workdir():
  out = _launch("--dry-run", "--name", "pod", "--zone", "z", "train", "--workdir", "gs://b/runs/8b").stdout
  ssh = [shlex.split(line) for line in out.splitlines() if "rlef_jax.train" in line]
  assert len(ssh) == 1 and "--workdir=gs://b/runs/8b" in shlex.split(_remote_command(ssh[0]))


def test_launch_metrics_copies_worker_zero_metrics():
  out = _launch("--dry-run", "--name", "pod", "--zone", "z", "--dest", "my dir", "metrics").stdout
  mkdir, scp = [shlex.split(line) for line in out.splitlines()]
  assert mkdir == ["mkdir", "-p", "my dir"]
  assert scp[4:] == ["scp", "--recurse", "pod:rlef_metrics", "my dir", "--zone=z", "--worker=0"]


def test_launch_exec_runs_a_quoted_command_on_all_workers():
  out = _launch("--dry-run", "--name", "pod", "--zone", "z", "exec", "--", "gsutil", "cp", "-r",
                "gs://b/tok dir", "tok").stdout
  (argv,) = [shlex.split(line) for line in out.splitlines()]
  assert "--worker=all" in argv
  assert shlex.split(_remote_command(argv)) == ["gsutil", "cp", "-r", "gs://b/tok dir", "tok"]


@pytest.mark.parametrize("args, match", [
    (["--name", "n", "--zone", "z", "exec"], "exec needs a command after --"),
    (["--zone", "z", "train", "--workdir", "/w"], r"--name \(or \$TPU_NAME\) is required"),
    (["--name", "n", "--zone", "z", "train"], "--workdir is required for train"),
    (["--name", "n", "--zone", "z", "launch"], "unknown STEP 'launch'"),
    (["--name", "n", "--zone", "z", "--bogus", "stop"], "unknown option --bogus"),
    (["--name", "n", "--zone", "z", "--config", "configs/nope.py", "train", "--workdir", "/w"],
     "configs/nope.py does not exist"),
    (["--name", "n", "--zone", "z", "train", "--workdir", "s3://b/run"],
     "a URL workdir must be gs://BUCKET/PATH"),
])
def test_launch_rejects_bad_arguments(args, match):
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  result = _launch("--dry-run", *args, env=env, check=False)
  assert result.returncode == 2
  assert __import__("re").search(match, result.stderr), result.stderr


_FAKE_GCLOUD = textwrap.dedent("""\
    #!{python}
    # A stand-in for gcloud: records its argv and plays a pod of 2 workers in $FAKE_POD/worker<i>.
    import json, os, shutil, subprocess, sys
    argv = sys.argv[1:]
    pod = os.environ["FAKE_POD"]
    with open(os.path.join(pod, "gcloud_calls.jsonl"), "a") as f:
      f.write(json.dumps(argv) + "\\n")
    worker = next(a.split("=", 1)[1] for a in argv if a.startswith("--worker="))
    homes = [os.path.join(pod, f"worker{{i}}") for i in (range(2) if worker == "all" else [int(worker)])]
    if argv[3] == "scp":
      for home in homes:
        shutil.copy(argv[4], os.path.join(home, argv[5].split(":", 1)[1]))
    elif argv[3] == "ssh":
      command = next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))
      if "scripts/setup.sh" not in command:  # installing requirements is not simulated
        for home in homes:
          subprocess.run(["bash", "-c", command], cwd=home, check=True)
    """)

_FAKE_TRAINER = textwrap.dedent("""\
    #!/usr/bin/env bash
    printf '%s\\n' "$@" > ../train_argv
    exec sleep 60
    """)


def test_launch_runs_training_on_every_worker_of_a_fake_pod(tmp_path):
  bin_dir, pod = tmp_path / "bin", tmp_path / "pod"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(_FAKE_GCLOUD.format(python=sys.executable))
  (bin_dir / "gcloud").chmod(0o755)
  for i in range(2):
    venv_bin = pod / f"worker{i}" / "rlef_jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(_FAKE_TRAINER)
    (venv_bin / "python").chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_POD=str(pod))
  common = ["--name", "pod", "--zone", "z"]
  try:
    _launch(*common, "all", "--workdir", "/home/u/bucket/my run", "--", "--config.train.seed=3", env=env)
    for i in range(2):
      home = pod / f"worker{i}"
      assert (home / "rlef_jax" / "rlef_jax" / "distributed.py").is_file()  # the checkout arrived
      for _ in range(50):
        if (home / "train_argv").exists():
          break
        time.sleep(0.1)
      assert (home / "train_argv").read_text().splitlines() == [
          "-m", "rlef_jax.train", "--config=configs/llama8b.py", "--workdir=/home/u/bucket/my run",
          "--config.train.seed=3"]
    status = _launch(*common, "status", env=env).stdout
    assert status.count(": running") == 2, status
    calls = [json.loads(line) for line in (pod / "gcloud_calls.jsonl").read_text().splitlines()]
    assert [c[3] for c in calls] == ["scp", "ssh", "ssh", "ssh", "ssh"]
    pids = [int((pod / f"worker{i}" / "rlef_jax" / "rlef_train.pid").read_text()) for i in range(2)]
  finally:
    _launch(*common, "stop", env=env)
  for i, pid in enumerate(pids):
    assert not (pod / f"worker{i}" / "rlef_jax" / "rlef_train.pid").exists()
    assert _gone(pid), f"trainer {pid} of worker {i} survived `launch.sh stop`"
  assert _launch(*common, "status", env=env).stdout.count(": not running") == 2


def _gone(pid: int, wait_s: float = 5.0) -> bool:
  """Whether process `pid` ended (a zombie left for an init that does not reap counts as ended)."""
  deadline = time.monotonic() + wait_s
  while time.monotonic() < deadline:
    try:
      with open(f"/proc/{pid}/status") as f:
        if any(line.startswith("State:") and "Z" in line.split()[1] for line in f):
          return True
    except FileNotFoundError:
      return True
    time.sleep(0.1)
  return False
