"""benchmarks/fit.py: the per-device memory of the trainer's compiled steps (8 forced CPU devices,
tests/conftest.py). The fast test checks the measurement against real arrays built the trainer's
way; the slow ones compile Llama 3.1 8B on 8 devices and 70B on 64 (a subprocess) against 70 GB."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlef_jax import model as model_lib
from rlef_jax import ppo
from rlef_jax import round_batch
from rlef_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 70e9  # bytes per device: an 80 GB GPU with room for its runtime


def _load_fit():
  spec = importlib.util.spec_from_file_location("fit_benchmark", os.path.join(ROOT, "benchmarks", "fit.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up
  spec.loader.exec_module(module)
  return module


fit = _load_fit()


def _device_bytes(tree, device) -> int:
  """Bytes `device` holds of a pytree of real arrays (its addressable shard of each)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = next(s for s in x.addressable_shards if s.device == device)
    total += shard.data.size * x.dtype.itemsize
  return total


def test_argument_bytes_are_the_trainer_state_and_minibatch_shards():
  """The update's reported argument bytes equal the bytes one device holds of a real train state
  (built as `train.train` builds it: policy on its shardings, value copied from it, optimizer states
  from `init`, `round_batch.on_mesh`) and a real sharded minibatch; the abstract state has the real
  one's shapes, dtypes and shardings."""
  config = fit.load_config(os.path.join(ROOT, "configs", "tiny.py"),
                           ["rl.num_microbatches=-1", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
                            "model.vocab_size=512"])  # 491 does not split over tensor = 2
  devices = jax.devices()[:8]
  summary, (update,) = fit.measure(config, devices, phases=("update",))

  s = fit.make_setup(config, devices)
  key = jax.random.key(0)
  reference = sharding.init_params(s.policy_model, s.mesh, key)
  value = model_lib.value_params_from_policy(reference, key, s.llama_config)
  policy = jax.tree.map(lambda x: jnp.array(x, copy=True), reference)
  state = round_batch.on_mesh(ppo.init_train_state(policy, value, s.policy_opt, s.value_opt, key), s.mesh)
  B, L, T = config.rl.minibatch_size, config.sampling.max_context_length, config.env.max_turns
  batch = sharding.shard_batch(s.mesh, {
      k: np.zeros((B, L) if k.endswith("BxL") else (B, T), dtype)
      for k, dtype in fit.minibatch_dtypes(ppo.PPOSettings.from_config(config.rl)).items()})
  assert update.argument == _device_bytes((state, batch), devices[0])
  assert update.alias == _device_bytes(state, devices[0])  # the donated state is updated in place
  assert summary["resident"] == _device_bytes((state, reference), devices[0])

  abstract, _ = fit.abstract_state(s)
  for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert (a.shape, a.dtype) == (r.shape, r.dtype)
    assert a.sharding.is_equivalent_to(r.sharding, r.ndim), (a.sharding, r.sharding)
  # 2 x 2 x 2: params split 4 ways (fsdp x tensor on each matrix), so the state is not replicated.
  assert summary["policy_params"] < sum(x.nbytes for x in jax.tree.leaves(policy)) / 2


def test_reference_bytes_follow_its_dtype():
  config = fit.load_config(os.path.join(ROOT, "configs", "tiny.py"),
                           ["model.dtype='bfloat16'", "rl.reference_dtype='bfloat16'"])
  summary, _ = fit.measure(config, jax.devices()[:8], phases=())
  assert summary["reference_params"] * 2 == summary["policy_params"]


def _check(rows):
  too_big = [f"{r['phase']} {r['step']}: {r['in_loop'] / 1e9:.2f} GB" for r in rows if r["in_loop"] > LIMIT]
  assert not too_big, too_big


@pytest.mark.slow  # about 3 min on 2 cores: 8 compiled steps of the 8B model
def test_llama8b_fits_one_8_gpu_host():
  config = fit.load_config(os.path.join(ROOT, "configs", "llama8b.py"))
  _, measures = fit.measure(config, jax.devices()[:8])
  _check([m.row(LIMIT) for m in measures])
  assert {m.step for m in measures} == {"update", "policy logprob", "reference logprob", "value",
                                        "prepare", "prefill", "feed", "decode"}


@pytest.fixture(scope="module")
def llama70b_on_64():
  """benchmarks/fit.py --json for llama70b on 64 forced devices, in its own process (this one has 8)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # fit.py forces its own device count
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fit.py"),
                        f"--config={os.path.join(ROOT, 'configs', 'llama70b.py')}", "--devices=64",
                        "--json"], capture_output=True, text=True, env=env, timeout=1800, check=False)
  lines = out.stdout.strip().splitlines()
  assert lines and lines[-1].startswith("{"), out.stdout + out.stderr
  return json.loads(lines[-1])


@pytest.mark.slow  # about 5 min on 2 cores (both 70B tests): 8 compiled steps on 64 forced devices
def test_llama70b_update_and_scoring_fit_eight_8_gpu_hosts(llama70b_on_64):
  _check([r for r in llama70b_on_64["steps"] if r["phase"] in ("update", "score")])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "not shown on CPU: the CPU backend has no bf16 dots and holds an f32 copy of the sampler's bf16 "
    "weights (2 x 17.6 GB per device at tensor = 8) that a GPU does not make; see BUILD_NOTES "
    "'8B and 70B fit'"))
def test_llama70b_sampler_fits_eight_8_gpu_hosts(llama70b_on_64):
  _check([r for r in llama70b_on_64["steps"] if r["phase"] == "sampler"])


@pytest.mark.slow  # about 35 s: the compiled steps of a 135M model
def test_smollm2_fits_the_2_core_machine_on_one_device():
  """configs/smollm2.py on one CPU device (24 GiB machine): every step of a round, with the state and
  the reference beside it, under 16 GB. Its first version (no remat, unrolled layers, one update
  chunk) needed 556 GB of update temporaries and was killed by the OOM killer (issue #10)."""
  config = fit.load_config(os.path.join(ROOT, "configs", "smollm2.py"))
  _, measures = fit.measure(config, jax.devices()[:1])
  rows = [m.row(16e9) for m in measures]
  too_big = [f"{r['phase']} {r['step']}: {r['in_loop'] / 1e9:.2f} GB" for r in rows if r["in_loop"] > 16e9]
  assert not too_big, too_big
  assert {m.step for m in measures} >= {"update", "policy logprob", "value", "prefill", "decode"}
