"""The trainer end to end on a tiny model: bitwise resume (at a data-epoch boundary), SIGTERM, and the
logged metrics (a resumed run must match an uninterrupted one; issue #5)."""

import gc
import importlib.util
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlef_jax import metrics as metrics_lib
from rlef_jax import round_batch
from rlef_jax import experiment
from rlef_jax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A tiny model and a small round; `train[:8]` makes every round of 8 rollouts exactly one data epoch.
OVERRIDES = {
    "model.hidden_size": 32, "model.intermediate_size": 64, "model.num_layers": 1,
    "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 16,
    "data.train_split": "train[:8]",
    "sampling.max_new_tokens": 24,
    "rl.rollouts_per_round": 8, "rl.minibatch_size": 8, "rl.updates_per_round": 1,
    "rl.score_batch_size": 0, "rl.num_microbatches": -1,  # tiny's -4 needs 32 episodes on 8 devices
    "train.num_updates": 2, "train.eval_every": 100, "train.checkpoint_every": 100,
    "train.log_every": 1,
    "eval.max_problems": 2, "eval.num_rollouts_per_problem": 1, "eval.single_turn": True,
    "warmstart.steps": 2, "warmstart.batch_size": 4, "warmstart.num_microbatches": 2,
    "warmstart.num_dialogues": 8,
    "execution.workers": 2,
}

# Keys that measure wall-clock time, not what was computed.
_TIMING = ("time/", "throughput/", "round/seconds", "rollout/seconds", "rollout/sample_seconds",
           "rollout/execution_wait_fraction", "rollout/generated_tokens_per_second")


def tiny_config(data_dir, **extra):
  spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in {**OVERRIDES, "data.data_dir": str(data_dir), **extra}.items():
    group, field = key.split(".")
    config[group][field] = value
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The synthetic TFDS dataset, prepared once (about 5 s)."""
  return tmp_path_factory.getbasetemp() / "tfds"


def _checkpoint_state(workdir):
  """The raw arrays of the latest train checkpoint, as a flat {path: numpy array} dict."""
  root = pathlib.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(root / str(step) / "state")
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  as_numpy = lambda v: np.asarray(jax.random.key_data(v) if jax.dtypes.issubdtype(
      v.dtype, jax.dtypes.prng_key) else v)
  return step, {jax.tree_util.keystr(k): as_numpy(v) for k, v in flat}


def _without_timing(lines):
  return [{k: v for k, v in line.items() if not k.startswith(_TIMING)} for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  results = train_lib.train(tiny_config(data_dir), str(workdir))
  return workdir, results


def assert_same_run(workdir_a, workdir_b, steps: int) -> None:
  """Both workdirs' latest checkpoints are step `steps` and hold equal arrays (params, optimizer
  states, step, RNG), and every logged value but the timings is equal."""
  step_a, state_a = _checkpoint_state(workdir_a)
  step_b, state_b = _checkpoint_state(workdir_b)
  assert step_a == step_b == steps
  assert state_a.keys() == state_b.keys()
  assert any("policy_params" in k for k in state_a) and any("opt_state" in k for k in state_a)
  for key in state_a:
    np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
  lines_a = metrics_lib.read_jsonl(pathlib.Path(workdir_a) / "metrics.jsonl")
  lines_b = metrics_lib.read_jsonl(pathlib.Path(workdir_b) / "metrics.jsonl")
  assert [l["step"] for l in lines_a] == list(range(1, steps + 1))
  assert _without_timing(lines_a) == _without_timing(lines_b)


@pytest.mark.slow  # about 70 s on top of the shared run (two more train() calls)
def test_stop_and_resume_is_bitwise_identical(tmp_path, data_dir, uninterrupted):
  """Stop after round 1 (= the end of data epoch 1), resume, and compare with one straight run:
  params, optimizer states, step, RNG and every logged value must be equal bit for bit."""
  straight, straight_results = uninterrupted
  config = tiny_config(data_dir)
  stopped = train_lib.train(config, str(tmp_path), stop_after_updates=1)
  assert "after" not in stopped
  assert _checkpoint_state(tmp_path)[0] == 1
  assert len(metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")) == 1
  resumed = train_lib.train(config, str(tmp_path))

  assert_same_run(tmp_path, straight, steps=2)

  # The final evaluation sees the same params and RNG, so it is the same too; the resumed run
  # reports the "before" evaluation of its first part.
  drop = lambda s: {k: v for k, v in s.items() if not k.endswith("seconds")}
  assert drop(resumed["after"]) == drop(straight_results["after"])
  assert drop(resumed["before"]) == drop(straight_results["before"])


def test_metrics_hold_what_the_issue_asks_for(uninterrupted):
  workdir, results = uninterrupted
  lines = metrics_lib.read_jsonl(workdir / "metrics.jsonl")
  required = {
      "reward/task_mean", "solve/public", "solve/private", "episode/turns", "kl/turn_mean",
      "pg_clip_frac", "pg_entropy", "value_loss", "explained_variance", "episode/response_tokens",
      "time/rollout", "time/score", "time/update", "throughput/policy_tokens_per_second",
      "rollout/generated_tokens_per_second", "logp/sampler_vs_trainer_abs_diff"}
  for line in lines:
    assert required <= set(line), sorted(required - set(line))
    assert all(np.isfinite(v) for v in line.values())
    # Rollouts are sampled by the policy being trained, at temperature 1: the trainer's full
    # forward gives the sampler's log-probs up to float32 noise.
    assert line["logp/sampler_vs_trainer_abs_diff"] < 1e-4
    assert abs(line["logp/behaviour_kl"]) < 1e-4 and line["rollout/policy_lag_updates"] == 0
    assert 1 <= line["episode/turns"] <= 3
    assert 0 < line["episode/response_tokens"] <= OVERRIDES["sampling.max_new_tokens"]
    assert line["batch/padded_length"] % 64 == 0 and 0 <= line["batch/padding_fraction"] < 1
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  for name in ("step_0", "step_2_final"):
    summary = json.loads((workdir / "eval" / f"{name}.json").read_text())
    assert summary["multi_turn_1at3"]["episodes"] == 2
    assert summary["single_turn_pass1"]["episodes"] == 6
  assert results["after"]["name"] == "step_2_final"
  assert (workdir / "reference_params" / "params").is_dir()


def test_async_rollouts_sample_the_next_round_during_the_updates(tmp_path, data_dir, uninterrupted):
  """rl.async_rollouts: round 2 is sampled from the policy before round 1's update (lag 1 update), in
  a thread while that update runs, and the evaluation after round 1 waits for it. Round 1 is the
  synchronous run's, bit for bit; round 2's rollouts are older than the policy they train, which the
  behaviour KL shows and the behaviour correction accounts for."""
  config = tiny_config(data_dir, **{"rl.async_rollouts": True, "train.eval_every": 1})
  results = train_lib.train(config, str(tmp_path))
  lines = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
  sync = metrics_lib.read_jsonl(uninterrupted[0] / "metrics.jsonl")
  assert [l["rollout/policy_lag_updates"] for l in lines] == [0, 1]
  assert _without_timing(lines)[0] == _without_timing(sync)[0]
  # Round 2: the same problems and key as the synchronous run's, sampled by the policy one update
  # older, so the trainer's log-probs differ from the sampler's by more than float noise.
  assert lines[1]["logp/sampler_vs_trainer_abs_diff"] > 10 * sync[1]["logp/sampler_vs_trainer_abs_diff"]
  assert lines[1]["logp/behaviour_kl"] != sync[1]["logp/behaviour_kl"]
  assert json.loads((tmp_path / "eval" / "step_1.json").read_text())["multi_turn_1at3"]["episodes"] == 2
  assert results["after"]["name"] == "step_2_final"


@pytest.mark.slow  # about 70 s: two more train() calls
def test_async_rollouts_stopped_and_resumed_give_the_synchronous_run(tmp_path, data_dir, uninterrupted):
  """A stop with rollouts in flight discards them and checkpoints the data order from before their
  problems: the resumed round draws the same problems and samples them with the resumed policy and
  the round's own key (lag 0) -- here exactly the synchronous run."""
  config = tiny_config(data_dir, **{"rl.async_rollouts": True})
  train_lib.train(config, str(tmp_path), stop_after_updates=1)
  train_lib.train(config, str(tmp_path))
  assert_same_run(tmp_path, uninterrupted[0], steps=2)


def test_async_rollouts_refuse_several_processes(monkeypatch, data_dir, tmp_path):
  from rlef_jax import errors
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  run = experiment.build(tiny_config(data_dir, **{"rl.async_rollouts": True}), str(tmp_path))
  try:
    with pytest.raises(errors.ConfigError, match="async_rollouts runs in one process only"):
      train_lib._start(run)
  finally:
    run.close()


def test_old_logp_from_the_sampler_gives_the_rescored_run(tmp_path, data_dir, uninterrupted):
  """rl.old_logp = "sampler": pi_theta_old's log-probs are the sampler's own instead of a rescoring
  pass; in a synchronous round they differ by float noise only, so the run is the rescored one up to
  that noise (a wrong source, e.g. zeros or another round's, moves the params by far more)."""
  train_lib.train(tiny_config(data_dir, **{"rl.old_logp": "sampler"}),
                  str(tmp_path))
  lines = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
  rescored = metrics_lib.read_jsonl(uninterrupted[0] / "metrics.jsonl")
  assert [l["logp/sampler_vs_trainer_abs_diff"] for l in lines] == [0.0, 0.0]
  assert rescored[0]["logp/sampler_vs_trainer_abs_diff"] > 0
  for line, ref in zip(lines, rescored):
    assert line["solve/private"] == ref["solve/private"]  # the same rollouts: same params up to noise
    np.testing.assert_allclose(line["policy_loss"], ref["policy_loss"], rtol=1e-3, atol=1e-6)
  _, state = _checkpoint_state(tmp_path)
  _, ref_state = _checkpoint_state(uninterrupted[0])
  params = [k for k in state if "policy_params" in k]
  assert params
  for key in params:
    np.testing.assert_allclose(state[key], ref_state[key], atol=2e-5, err_msg=key)


def test_old_logp_from_the_sampler_is_refused_with_async_rollouts(data_dir):
  from rlef_jax import config as config_lib
  from rlef_jax import errors
  with pytest.raises(errors.ConfigError, match="old_logp='sampler' needs synchronous rollouts"):
    config_lib.validate(tiny_config(data_dir, **{"rl.old_logp": "sampler", "rl.async_rollouts": True}))
  with pytest.raises(errors.ConfigError, match="old_logp"):
    config_lib.validate(tiny_config(data_dir, **{"rl.old_logp": "policy"}))


@pytest.mark.slow  # about 90 s on 2 busy cores: a fresh process compiles everything again
def test_sigterm_writes_a_final_checkpoint_and_exits_zero(tmp_path, data_dir):
  # Make sure the dataset exists before the child starts (the in-process runs may not have run).
  experiment.data_source(tiny_config(data_dir), "train")
  flags = [f"--config.{k}={v}" for k, v in
           {**OVERRIDES, "data.data_dir": data_dir, "train.num_updates": 400,
            "warmstart.steps": 1}.items()]
  cmd = [sys.executable, "-m", "rlef_jax.train", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", *flags]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output = []
  try:
    deadline = time.monotonic() + 240
    for line in proc.stdout:
      output.append(line)
      if line.startswith("step 1/400"):
        proc.send_signal(signal.SIGTERM)
        break
      assert time.monotonic() < deadline, "".join(output)
    rest, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  output.append(rest)
  text = "".join(output)
  assert proc.returncode == 0, text
  assert "rerun the same command to resume" in text
  step, state = _checkpoint_state(tmp_path)
  assert 1 <= step < 400
  assert any("policy_params" in k for k in state)
  lines = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
  assert lines[-1]["step"] == step


def _buffers(arrays) -> dict:
  """{(device, address): bytes} of the device buffers behind `arrays` (a buffer shared by several
  array objects, e.g. a sharded array and its per-device pieces, counted once)."""
  return {(shard.device, shard.data.unsafe_buffer_pointer()): shard.data.nbytes
          for a in arrays for shard in a.addressable_shards}


def _device_bytes_alive() -> int:
  """Bytes the live jax arrays hold on the devices."""
  gc.collect()  # arrays only a reference cycle keeps are garbage, not memory in use
  return sum(_buffers(jax.live_arrays()).values())


def _nbytes_on_devices(tree) -> int:
  return sum(_buffers(jax.tree.leaves(tree)).values())


def test_resume_and_evaluate_hold_one_train_state_at_most(tmp_path, data_dir, uninterrupted,
                                                           monkeypatch):
  """Issue #13 item 5, measured on the tiny model: the device bytes of all live arrays when a
  resume's restore starts and ends, and when an evaluation's restore starts and ends. A resume holds
  the reference policy and then the restored state, never a fresh state beside it; an evaluation
  holds the evaluated policy alone (no value model, no optimizer moments)."""
  import shutil
  from rlef_jax import checkpoint as checkpoint_lib, evaluate as evaluate_lib
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  seen = []
  for name in ("restore", "restore_part"):
    def measured(self, *args, _original=getattr(checkpoint_lib.Checkpointer, name), **kwargs):
      before = _device_bytes_alive()
      out = _original(self, *args, **kwargs)
      seen.append((before, _device_bytes_alive(), out))
      return out
    monkeypatch.setattr(checkpoint_lib.Checkpointer, name, measured)

  run = experiment.build(tiny_config(data_dir), str(workdir))
  try:
    baseline = _device_bytes_alive()
    t = train_lib._start(run)  # resumes from step 2
    assert t.step == 2 and len(seen) == 1
    at_start, at_end, (state, _) = seen[0]
    state_bytes, ref_bytes = _nbytes_on_devices(state), _nbytes_on_devices(t.ref_params)
    policy_bytes = _nbytes_on_devices(state.policy_params)
    assert state_bytes > 4 * policy_bytes  # policy, value, two Adam moments each
    slack = 64 << 10  # keys, counters, small replicated scalars
    assert at_start - baseline <= ref_bytes + slack, (at_start - baseline, ref_bytes, state_bytes)
    assert at_end - baseline <= ref_bytes + state_bytes + slack, (at_end - baseline, ref_bytes, state_bytes)
    t.close()
    del t, state
    seen.clear()

    baseline = _device_bytes_alive()
    params, name, step = evaluate_lib.evaluated_params(run, None)
    assert (name, step) == ("step_2", 2) and len(seen) == 1
    at_start, at_end, _ = seen[0]
    assert at_start - baseline <= slack
    assert at_end - baseline <= _nbytes_on_devices(params) + slack
  finally:
    run.close()


def test_a_corrupted_latest_checkpoint_is_refused_on_resume(tmp_path, data_dir, uninterrupted):
  """Issue 14: bytes flipped in the latest checkpoint's largest data file stop the resume with one
  error naming the file (before this, the run resumed silently with corrupted parameters)."""
  import shutil
  from rlef_jax import errors
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted[0], workdir)
  step_dir = workdir / "checkpoints" / "2"
  target = max((p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  target.write_bytes(bytes(data))
  with pytest.raises(errors.InputError, match=(
      f"checkpoint {re.escape(str(step_dir))} is corrupt: {target.relative_to(step_dir)}: checksum mismatch.*"
      "no older checkpoint verifies")):
    train_lib.train(tiny_config(data_dir), str(workdir))


def test_sliced_split_must_name_a_real_split(data_dir):
  with pytest.raises(ValueError, match="no split 'trian"):
    experiment.data_source(tiny_config(data_dir), "trian[:8]")


def test_a_workdir_url_of_an_unknown_scheme_is_refused_not_turned_into_a_local_directory(
    tmp_path, data_dir, monkeypatch):
  from rlef_jax import errors
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ConfigError, match="memory://bucket/run: unsupported URL scheme 'memory'; "
                     "use a local path or gs://, s3://, az://"):
    train_lib.train(tiny_config(data_dir), "memory://bucket/run")
  assert list(tmp_path.iterdir()) == []


def _bucket_files(gcs, prefix):
  root = pathlib.Path(gcs.root) / prefix
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_gs_workdir_run_is_the_local_run_and_its_corruption_is_caught(gcs, tmp_path, data_dir,
                                                                         uninterrupted, monkeypatch):
  """Issue 14 item 5: `--workdir=gs://bucket/run` through the GCS double (orbax's arrays through
  TensorStore's GCS driver over HTTP, everything else through epath's gs:// file system). The run
  writes nothing locally but its metrics staging directory, ends bitwise identical to the local run
  (checkpoint arrays, logged metrics, evaluations), commits each step with its manifest, and a
  corrupted object in the bucket is refused on resume by name."""
  from rlef_jax import errors
  from rlef_jax import evaluate as evaluate_lib
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the metrics staging directory
  uploads = gcs.served["POST"]
  results = train_lib.train(tiny_config(data_dir), "gs://rlef-test/runs/a")
  assert gcs.unknown == []
  assert gcs.served["POST"] - uploads >= 10  # the arrays went through TensorStore's GCS driver
  assert [p.name for p in tmp_path.iterdir()] == ["home"]  # no local directory named gs:
  in_bucket = pathlib.Path(gcs.root) / "rlef-test" / "runs" / "a"
  files = _bucket_files(gcs, "rlef-test/runs/a")
  assert {"checkpoints/2/commit_success.txt", "checkpoints/2/rlef_manifest.json",
          "reference_params/commit_success.txt", "reference_params/rlef_manifest.json",
          "metrics.jsonl", "best.json", "eval/step_0.json", "eval/step_2_final.json",
          "eval/step_2_final.episodes.jsonl"} <= set(files), files
  assert not [f for f in files if "tmp" in f.split("/")[0] or ".orbax-checkpoint-tmp" in f]
  assert [f for f in files if f.startswith("tensorboard/events.out.tfevents.")]

  assert_same_run(in_bucket, uninterrupted[0], steps=2)
  drop = lambda s: {k: v for k, v in s.items() if not k.endswith("seconds")}
  assert drop(results["after"]) == drop(uninterrupted[1]["after"])
  assert metrics_lib.read_jsonl("gs://rlef-test/runs/a/metrics.jsonl") == metrics_lib.read_jsonl(
      in_bucket / "metrics.jsonl")
  evaluate_lib.check_evaluated_checkpoint("gs://rlef-test/runs/a", "best")
  evaluate_lib.check_evaluated_checkpoint("gs://rlef-test/runs/a", None)

  target = max((p for p in (in_bucket / "checkpoints" / "2").rglob("*") if "/d/" in str(p)),
               key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0xFF
  target.write_bytes(bytes(data))
  rel = target.relative_to(in_bucket / "checkpoints" / "2")
  with pytest.raises(errors.InputError, match=re.escape(
      f"checkpoint gs://rlef-test/runs/a/checkpoints/2 is corrupt: {rel}: checksum mismatch")):
    train_lib.train(tiny_config(data_dir), "gs://rlef-test/runs/a")


def test_an_init_checkpoint_in_a_bucket_is_checked_like_a_local_one(gcs, data_dir):
  from rlef_jax import checkpoint as checkpoint_lib, config as config_lib, errors, sharding
  from rlef_jax import model as model_lib
  config = tiny_config(data_dir)
  model = model_lib.Llama(config_lib.llama_config(config.model))
  mesh = sharding.make_mesh(config.mesh)
  checkpoint_lib.save_params("gs://rlef-test/init/p", sharding.init_params(model, mesh, jax.random.key(0)),
                             metadata={})
  experiment.check_init_checkpoint("gs://rlef-test/init/p", model)
  wider = model_lib.Llama(config_lib.llama_config(tiny_config(data_dir, **{"model.hidden_size": 64}).model))
  with pytest.raises(errors.ConfigError, match="init_checkpoint='gs://rlef-test/init/p': parameter .* has shape"):
    experiment.check_init_checkpoint("gs://rlef-test/init/p", wider)
  with pytest.raises(errors.MissingPathError, match="init_checkpoint='gs://rlef-test/init/q': no such directory$"):
    experiment.check_init_checkpoint("gs://rlef-test/init/q", model)


@pytest.mark.parametrize("saved_scanned", [False, True])
def test_an_init_checkpoint_stored_in_the_other_layer_layout_loads_as_the_same_model(
    tmp_path, data_dir, saved_scanned):
  """Params converted unrolled serve a `scan_layers=True` config (as configs/smollm2.py needs for
  remat) and the other way round: checked, restored, re-laid out, and the logits are the same model's."""
  import types
  from rlef_jax import checkpoint as checkpoint_lib, config as config_lib, sharding
  from rlef_jax import model as model_lib
  two_layers = {"model.num_layers": 2}
  saved_config = tiny_config(data_dir, **two_layers, **{"model.scan_layers": saved_scanned})
  run_config = tiny_config(data_dir, **two_layers, **{"model.scan_layers": not saved_scanned})
  saved_model = model_lib.Llama(config_lib.llama_config(saved_config.model))
  run_model = model_lib.Llama(config_lib.llama_config(run_config.model))
  mesh = sharding.make_mesh(run_config.mesh)
  saved = jax.tree.map(np.asarray, sharding.init_params(saved_model, mesh, jax.random.key(3)))
  checkpoint_lib.save_params(tmp_path / "p", saved, metadata={})
  run_config.model.init_checkpoint = str(tmp_path / "p")

  experiment.check_init_checkpoint(run_config.model.init_checkpoint, run_model)
  run = types.SimpleNamespace(config=run_config, policy_model=run_model, mesh=mesh,
                              llama_config=run_model.config)
  params = experiment.initial_policy_params(run, jax.random.key(0))

  relaid = model_lib.unstack_layers(saved) if saved_scanned else model_lib.stack_layers(saved)
  assert jax.tree.structure(params) == jax.tree.structure(relaid)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(relaid)):
    np.testing.assert_array_equal(np.asarray(got), want)
  want_sharding = sharding.param_shardings(run_model, mesh)
  assert all(a.sharding == s for a, s in zip(jax.tree.leaves(params), jax.tree.leaves(want_sharding)))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, run_model.config.vocab_size)
  logits_saved, _ = saved_model.apply({"params": saved}, tokens)
  logits_run, _ = run_model.apply({"params": params}, tokens)
  np.testing.assert_allclose(np.asarray(logits_run), np.asarray(logits_saved), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # about 70 s: two more train() calls
def test_stop_and_resume_on_a_gs_workdir_is_bitwise_identical(gcs, tmp_path, data_dir, uninterrupted,
                                                              monkeypatch):
  """Stopped after round 1 and resumed from the bucket on a "fresh host" (an empty metrics staging
  directory): the same run as the uninterrupted local one."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "host1"))
  train_lib.train(tiny_config(data_dir), "gs://rlef-test/runs/b", stop_after_updates=1)
  monkeypatch.setenv("HOME", str(tmp_path / "host2"))
  train_lib.train(tiny_config(data_dir), "gs://rlef-test/runs/b")
  assert gcs.unknown == []
  assert_same_run(pathlib.Path(gcs.root) / "rlef-test" / "runs" / "b", uninterrupted[0], steps=2)


def test_score_batch_size_per_shard():
  """rl.score_batch_size: n episodes a pass, 0 = the whole round, -1 = one per data-parallel shard."""
  import ml_collections
  from rlef_jax import sharding
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  config = ml_collections.ConfigDict({"rl": {"score_batch_size": 0}})
  assert round_batch.score_batch_size(config, 1024, mesh) == 1024
  config.rl.score_batch_size = 64
  assert round_batch.score_batch_size(config, 1024, mesh) == 64
  config.rl.score_batch_size = -1
  assert round_batch.score_batch_size(config, 1024, mesh) == 4


@pytest.mark.parametrize("value_level", ["turn", "token"])
def test_scoring_by_length_chunks_equals_scoring_the_whole_round(tmp_path, data_dir, value_level):
  """rl.score_batch_size: episodes scored a few at a time, sorted by length and padded to each
  chunk's longest, give the whole-round log-probs and values wherever an episode has tokens (turn
  values, or with rl.value_level = "token" the values of the response tokens)."""
  from rlef_jax import model as model_lib, ppo, sharding
  config = tiny_config(data_dir)
  with config.unlocked():
    config.rl.value_level = value_level
  run = experiment.build(config, str(tmp_path))
  try:
    rng = np.random.default_rng(0)
    B, L, T = 8, 320, 3
    lengths = np.array([300, 12, 70, 150, 64, 65, 200, 5])
    tokens = np.full((B, L), run.tokenizer.pad_id, np.int32)
    for b, n in enumerate(lengths):
      tokens[b, :n] = rng.integers(0, run.llama_config.vocab_size, n)
    index = np.stack([rng.integers(0, n, T) for n in lengths]).astype(np.int32)
    turn_id = np.where(rng.random((B, L)) < 0.5, rng.integers(0, T, (B, L)), -1)
    turn_id[np.arange(L)[None, :] >= lengths[:, None]] = -1
    turn_id[:, 0] = -1  # a dialogue starts with its prompt
    batch = {"tokens_BxL": tokens, "value_index_BxT": index, "turn_id_BxL": turn_id.astype(np.int32),
             "length_B": lengths.astype(np.int32)}
    params = sharding.init_params(run.policy_model, run.mesh, jax.random.key(0))
    ref = sharding.init_params(run.policy_model, run.mesh, jax.random.key(1))
    values = model_lib.value_params_from_policy(params, jax.random.key(2), run.llama_config)
    state = ppo.TrainState(params, values, None, None, None, None)
    fns = round_batch.make_score_fns(run)
    whole = round_batch.score(run, state, ref, batch, fns)
    with config.unlocked():
      config.rl.score_batch_size = 2
    chunked = round_batch.score(run, state, ref, batch, fns)
  finally:
    run.close()
  real = np.arange(L)[None, :] < lengths[:, None]
  # Pairs by length: (5, 12) -> 64 positions, (64, 65) -> 128, (70, 150) -> 192, (200, 300) -> 320.
  width = {7: 64, 1: 64, 4: 128, 5: 128, 2: 192, 3: 192, 6: 320, 0: 320}
  for a, b in zip(whole[:2], chunked[:2]):
    np.testing.assert_allclose(b[real], a[real], atol=1e-5)
    for row, w in width.items():
      assert np.all(b[row, w:] == 0) and np.any(b[row, 1:lengths[row]] != 0)  # only w computed
  want_shape = (B, L) if value_level == "token" else (B, T)
  assert chunked[2].shape == whole[2].shape == want_shape
  np.testing.assert_allclose(chunked[2], whole[2], atol=1e-5)
  if value_level == "token":
    assert np.all(whole[2][turn_id < 0] == 0) and np.all(whole[2][turn_id >= 0] != 0)
