"""Tests for rlef_jax.checkpoint: params directories and async train-state checkpoints (8 CPU devices)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rlef_jax import checkpoint, model, sharding

CFG = model.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0,
                        max_position_embeddings=64)


def mesh_of(data, fsdp, tensor):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)))


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def random_tree():
  keys = jax.random.split(jax.random.key(7), 3)
  return {"w": jax.random.normal(keys[0], (8, 4)),
          "inner": {"b": jax.random.normal(keys[1], (4,)).astype(jnp.bfloat16),
                    "ids": jax.random.randint(keys[2], (16,), 0, 100)}}


def test_params_roundtrip_default_device(tmp_path):
  params = random_tree()
  metadata = {"architectures": ["LlamaForCausalLM"], "rope_scaling": None, "vocab_size": 64,
              "rms_norm_eps": 1e-5, "tokenizer_state": b"\x00\xffbytes"}
  checkpoint.save_params(tmp_path / "p", params, metadata=metadata)
  restored, restored_metadata = checkpoint.restore_params(tmp_path / "p")
  assert_tree_equal(restored, params)
  assert restored_metadata == metadata
  for x in jax.tree.leaves(restored):
    assert x.sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def test_params_restore_onto_mesh_shardings(tmp_path):
  params = random_tree()
  checkpoint.save_params(tmp_path / "p", params, metadata={})
  mesh = mesh_of(2, 2, 2)
  shardings = {"w": NamedSharding(mesh, P(("data", "fsdp"), "tensor")),
               "inner": {"b": NamedSharding(mesh, P("tensor")),
                         "ids": NamedSharding(mesh, P(None))}}
  restored, _ = checkpoint.restore_params(tmp_path / "p", shardings=shardings)
  assert_tree_equal(restored, params)
  assert restored["w"].sharding == shardings["w"]
  assert {s.data.shape for s in restored["w"].addressable_shards} == {(2, 2)}
  assert restored["inner"]["b"].sharding == shardings["inner"]["b"]


def test_params_errors(tmp_path):
  params = random_tree()
  checkpoint.save_params(tmp_path / "p", params, metadata={"a": 1})
  with pytest.raises(FileExistsError, match="already exists"):
    checkpoint.save_params(tmp_path / "p", params, metadata={})
  with pytest.raises(FileNotFoundError, match="is not a params directory"):
    checkpoint.restore_params(tmp_path / "nothing")
  with pytest.raises(ValueError, match="same tree structure"):
    checkpoint.restore_params(tmp_path / "p", shardings={"w": None})
  with pytest.raises(TypeError, match="JSON-able"):
    checkpoint.save_params(tmp_path / "q", params, metadata={"x": object()})
  assert not os.path.exists(tmp_path / "q")


def _train_state(params, optimizer, step, rng):
  return {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(step),
          "rng": rng}


def test_checkpointer_async_keeps_last_n_and_restores_everything(tmp_path):
  optimizer = optax.adamw(1e-3, weight_decay=0.1)
  params = random_tree()
  params["inner"]["b"] = params["inner"]["b"].astype(jnp.float32)
  params["inner"].pop("ids")
  grads = jax.tree.map(jnp.ones_like, params)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2, async_save=True)
  assert ckpt.latest_step() is None
  state, rng, states = _train_state(params, optimizer, 0, jax.random.key(3)), jax.random.key(3), {}
  for step in range(1, 5):
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    rng, _ = jax.random.split(rng)
    state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
             "step": jnp.int32(step), "rng": rng}
    states[step] = state
    ckpt.save(step, state, extra={"data_iterator": b'{"index": %d}' % step, "epoch": step // 3})
  ckpt.wait()
  assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4

  fresh = checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
  abstract = checkpoint.abstract_like(states[4])
  restored, extra = fresh.restore(None, abstract)
  assert extra == {"data_iterator": b'{"index": 4}', "epoch": 1}
  assert_tree_equal(restored["params"], states[4]["params"])
  assert_tree_equal(restored["opt_state"], states[4]["opt_state"])
  assert int(restored["step"]) == 4
  assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(restored["rng"]),
                                jax.random.key_data(states[4]["rng"]))
  np.testing.assert_array_equal(jax.random.uniform(restored["rng"], (5,)),
                                jax.random.uniform(states[4]["rng"], (5,)))
  older, extra3 = fresh.restore(3, abstract)
  assert_tree_equal(older["params"], states[3]["params"])
  assert extra3 == {"data_iterator": b'{"index": 3}', "epoch": 1}
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 1 .*available steps: \[3, 4\]"):
    fresh.restore(1, abstract)
  fresh.close()
  ckpt.close()


def test_checkpointer_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep must be >= 1"):
    checkpoint.Checkpointer(tmp_path / "a", max_to_keep=0)
  with checkpoint.Checkpointer(tmp_path / "b") as ckpt:
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
      ckpt.restore(None, {"x": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(TypeError, match="JSON-able"):
      ckpt.save(1, {"x": jnp.zeros(2)}, extra={"bad": {1, 2}})


def test_checkpoint_saved_on_one_mesh_restores_onto_another(tmp_path):
  """Real model + AdamW state saved on an 8x1x1 mesh, restored onto 2x2x2 (paper-scale resume)."""
  llama = model.Llama(CFG)
  optimizer = optax.adamw(1e-3, weight_decay=0.1)
  abstract_params = sharding.abstract_params(llama)

  def sharded_state(mesh, params):
    param_sh = sharding.param_shardings(llama, mesh)
    opt_sh = sharding.opt_state_shardings(optimizer, param_sh, abstract_params, mesh)
    state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(7),
             "rng": jax.random.key(11)}
    shardings = {"params": param_sh, "opt_state": opt_sh, "step": sharding.replicated(mesh),
                 "rng": sharding.replicated(mesh)}
    return state, shardings

  host_params = jax.jit(lambda r: nn.unbox(llama.init(r, jnp.zeros((1, 4), jnp.int32))["params"]))(
      jax.random.key(0))
  host_params = jax.tree.map(lambda x: x * 1.5 + 0.25, host_params)  # non-default values
  source_mesh, target_mesh = mesh_of(8, 1, 1), mesh_of(2, 2, 2)
  state, source_sh = sharded_state(source_mesh, host_params)
  state = jax.device_put(state, source_sh)
  with checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=1) as ckpt:
    ckpt.save(7, state, extra={"mesh": [8, 1, 1]})
    ckpt.wait()

  _, target_sh = sharded_state(target_mesh, host_params)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          checkpoint.abstract_like(state), target_sh)
  with checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=1) as ckpt:
    restored, extra = ckpt.restore(ckpt.latest_step(), abstract)
  assert extra == {"mesh": [8, 1, 1]}
  for x, y, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(target_sh)):
    assert x.sharding == s
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  q_kernel = restored["params"]["layers_0"]["attn"]["q"]["kernel"]  # [D, H, Dh] on fsdp, tensor
  assert {s.data.shape for s in q_kernel.addressable_shards} == {(16, 2, 8)}
  mu_q = restored["opt_state"][0].mu["layers_0"]["attn"]["q"]["kernel"]
  assert mu_q.sharding == q_kernel.sharding
