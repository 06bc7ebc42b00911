"""Tests for rlef_jax.sharding on 8 forced CPU devices (tests/conftest.py).

For mesh shapes (data, fsdp, tensor) = 8x1x1, 1x4x2 and 2x2x2: the arrays carry the shardings the
rules table promises (checked on `.sharding` and on the per-device shard shapes), the sharded
forward pass equals the single-device one, and a jitted loss + gradient + optax step on sharded
state equals the single-device step.
"""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rlef_jax import model, sharding

MESHES = [(8, 1, 1), (1, 4, 2), (2, 2, 2)]
CFG = model.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0,
                        max_position_embeddings=64)

# The layout each parameter must get, written out independently of the rules table.
EXPECTED_AXES = {
    "embedding": ("tensor", "fsdp"),
    "attn/q/kernel": ("fsdp", "tensor", None),
    "attn/k/kernel": ("fsdp", "tensor", None),
    "attn/v/kernel": ("fsdp", "tensor", None),
    "attn/o/kernel": ("tensor", None, "fsdp"),
    "mlp/gate/kernel": ("fsdp", "tensor"),
    "mlp/up/kernel": ("fsdp", "tensor"),
    "mlp/down/kernel": ("tensor", "fsdp"),
    "scale": (None,),
    "lm_head/kernel": ("fsdp", "tensor"),
    "value_head/kernel": ("fsdp", None),
    "value_head/bias": (None,),
}


def mesh_of(shape):
  data, fsdp, tensor = shape
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor)))


def expected_axes(path: str, ndim: int):
  for suffix, axes in EXPECTED_AXES.items():
    if path.endswith(suffix):
      return (None,) * (ndim - len(axes)) + axes  # a leading scan axis is never sharded
  raise AssertionError(f"no expected layout for {path}")


def assert_sharded_as(x, mesh, axes):
  """`x` is laid out by `axes` (mesh axis names per dim): sharding and per-device shard shapes."""
  assert x.sharding.is_equivalent_to(NamedSharding(mesh, P(*axes)), x.ndim), (x.sharding, axes)
  local = tuple(
      dim // math.prod(mesh.shape[a] for a in ((ax,) if isinstance(ax, str) else ax or ()))
      for dim, ax in zip(x.shape, axes))
  assert {s.data.shape for s in x.addressable_shards} == {local}
  assert len(x.addressable_shards) == 8


def check_params_layout(params, mesh):
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(k.key for k in path)
    assert_sharded_as(x, mesh, expected_axes(name, x.ndim))


def tokens(batch=8, length=12, seed=0):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, CFG.vocab_size)


@pytest.fixture(scope="module")
def host_params():
  init = jax.jit(lambda rng: nn.unbox(model.Llama(CFG).init(rng, tokens())["params"]))
  return init(jax.random.key(1))


def _apply(params, tokens_BxL, cache=None):
  return model.Llama(CFG).apply({"params": params}, tokens_BxL, cache)


@pytest.fixture(scope="module")
def cache_reference(host_params):
  """Single-device prefill of 10 tokens then one decode step."""
  apply = jax.jit(_apply)
  cache = model.init_cache(CFG, 8, 16)
  out1, cache = apply(host_params, tokens(length=10), cache)
  out2, cache = apply(host_params, tokens(length=1, seed=3), cache)
  return out1, out2, cache


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
  cfg = lambda d, f, t: ml_collections.ConfigDict(dict(data=d, fsdp=f, tensor=t))
  assert sharding.mesh_shape(cfg(-1, 2, 1), 8) == (4, 2, 1)
  assert sharding.mesh_shape(cfg(1, -1, 2), 8) == (1, 4, 2)
  assert sharding.mesh_shape(cfg(2, 2, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match=r"has 4 slots but there are 8 devices"):
    sharding.mesh_shape(cfg(2, 2, 1), 8)
  with pytest.raises(ValueError, match=r"8 devices are not divisible by the fixed axis sizes"):
    sharding.mesh_shape(cfg(-1, 3, 1), 8)
  with pytest.raises(ValueError, match=r"at most one -1"):
    sharding.mesh_shape(cfg(-1, -1, 1), 8)
  with pytest.raises(ValueError, match=r"config.mesh sizes must be >= 1"):
    sharding.mesh_shape(cfg(0, 8, 1), 8)


@pytest.mark.parametrize("shape", MESHES)
def test_make_mesh(shape):
  mesh = mesh_of(shape)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_every_logical_axis_of_the_design_has_one_rule():
  names = [name for name, _ in sharding.logical_rules()]
  assert len(names) == len(set(names))
  design = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm", "layers",
            "activation_batch", "activation_length", "activation_residual_length",
            "activation_embed", "activation_heads", "activation_kv_heads", "activation_mlp",
            "activation_vocab", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim"}
  assert set(names) == design


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_equals_unsharded(shape, host_params):
  mesh = mesh_of(shape)
  llama = model.Llama(CFG)
  params = sharding.shard_params(host_params, sharding.param_shardings(llama, mesh))
  check_params_layout(params, mesh)
  tokens_BxL = tokens()
  expected_BxLxV, _ = jax.jit(_apply)(host_params, tokens_BxL)
  forward = jax.jit(lambda p, t: llama.apply({"params": p}, t)[0])
  with sharding.use_mesh(mesh):
    logits_BxLxV = forward(params, sharding.shard_batch(mesh, tokens_BxL))
  np.testing.assert_allclose(logits_BxLxV, expected_BxLxV, atol=1e-5, rtol=1e-5)
  assert_sharded_as(logits_BxLxV, mesh, (("data", "fsdp"), None, "tensor"))


def test_activation_constraints_are_applied_not_skipped(host_params):
  mesh = mesh_of((1, 4, 2))
  llama = model.Llama(CFG)
  forward = jax.jit(lambda p, t: llama.apply({"params": p}, t)[0])
  params = sharding.shard_params(host_params, sharding.param_shardings(llama, mesh))
  without = forward.lower(params, tokens()).as_text()
  with sharding.use_mesh(mesh):
    text = forward.lower(params, tokens()).as_text()
  constraints = re.findall(r"sharding_constraint.*", text)
  assert not re.findall(r"sharding_constraint", without)
  assert len(constraints) >= 4 * CFG.num_layers
  assert any('{"data", "fsdp"}, {}, {"tensor"}' in c for c in constraints)


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_cache_prefill_and_decode_equal_unsharded(shape, host_params, cache_reference):
  mesh = mesh_of(shape)
  params = sharding.shard_params(host_params, sharding.param_shardings(model.Llama(CFG), mesh))
  prompt_BxL, next_Bx1 = tokens(length=10), tokens(length=1, seed=3)
  ref1, ref2, ref_cache = cache_reference

  cache = sharding.init_cache(CFG, 8, 16, mesh)
  kv_axes = (("data", "fsdp"), "tensor", None, None)  # keys [B, K, Dh, S], values [B, K, S, Dh]
  for x in cache.keys + cache.values:
    assert_sharded_as(x, mesh, kv_axes)
  assert_sharded_as(cache.lengths_B, mesh, (("data", "fsdp"),))
  step = jax.jit(_apply)
  with sharding.use_mesh(mesh):
    out1, cache = step(params, sharding.shard_batch(mesh, prompt_BxL), cache)
    out2, cache = step(params, sharding.shard_batch(mesh, next_Bx1), cache)
  np.testing.assert_allclose(out1, ref1, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out2, ref2, atol=1e-5, rtol=1e-5)
  for got, want in zip(cache.keys + cache.values, ref_cache.keys + ref_cache.values):
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(cache.lengths_B, np.full(8, 11))
  for x in cache.keys + cache.values:  # the constraint keeps the cache sharded
    assert_sharded_as(x, mesh, kv_axes)


def _optimizer():
  mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(1e-3, weight_decay=0.1, mask=mask))


def _train_step(llama, optimizer):
  def loss_fn(params, tokens_BxL):
    logits_BxLxV, _ = llama.apply({"params": params}, tokens_BxL)
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp_BxLxV, tokens_BxL[:, 1:, None], axis=-1))

  def step(params, opt_state, tokens_BxL):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BxL)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


BATCHES = [tokens(seed=s) for s in (10, 11)]


@pytest.fixture(scope="module")
def train_reference(host_params):
  """Two single-device steps: (params, opt_state, [loss, loss])."""
  optimizer = _optimizer()
  step = jax.jit(_train_step(model.Llama(CFG), optimizer))
  params, opt_state, losses = host_params, optimizer.init(host_params), []
  for batch in BATCHES:
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(loss)
  return params, opt_state, losses


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_train_step_equals_unsharded(shape, host_params, train_reference):
  mesh = mesh_of(shape)
  llama, optimizer = model.Llama(CFG), _optimizer()
  step = _train_step(llama, optimizer)
  ref_params, ref_opt, ref_losses = train_reference

  param_sh = sharding.param_shardings(llama, mesh)
  opt_sh = sharding.opt_state_shardings(optimizer, param_sh, sharding.abstract_params(llama), mesh)
  params = sharding.shard_params(host_params, param_sh)
  opt_state = jax.device_put(optimizer.init(host_params), opt_sh)
  adam = opt_state[1][0]
  check_params_layout(adam.mu, mesh)
  check_params_layout(adam.nu, mesh)
  assert_sharded_as(adam.count, mesh, ())

  sharded_step = jax.jit(step, in_shardings=(param_sh, opt_sh, sharding.data_sharding(mesh)),
                         out_shardings=(param_sh, opt_sh, sharding.replicated(mesh)))
  with sharding.use_mesh(mesh):
    for batch, ref_loss in zip(BATCHES, ref_losses):
      params, opt_state, loss = sharded_step(params, opt_state, sharding.shard_batch(mesh, batch))
      np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               (params, opt_state), (ref_params, ref_opt))
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, host_params)
  assert min(jax.tree.leaves(moved)) > 1e-4  # the step really changed every parameter
  check_params_layout(params, mesh)
  check_params_layout(opt_state[1][0].mu, mesh)


def test_init_params_on_mesh_scan_layers_and_value_model():
  mesh = mesh_of((2, 2, 2))
  cfg = model.LlamaConfig(**{**CFG.__dict__, "scan_layers": True})
  params = sharding.init_params(model.Llama(cfg), mesh, jax.random.key(0))
  assert params["layers"]["attn"]["q"]["kernel"].shape[0] == cfg.num_layers
  check_params_layout(params, mesh)
  value_params = sharding.init_params(model.LlamaValue(CFG), mesh, jax.random.key(0))
  check_params_layout(value_params, mesh)
  host = jax.jit(lambda r: nn.unbox(model.LlamaValue(CFG).init(r, tokens())["params"]))(
      jax.random.key(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), value_params, host)


def test_param_shardings_accepts_boxed_and_rejects_foreign_trees(host_params):
  mesh = mesh_of((1, 4, 2))
  llama = model.Llama(CFG)
  from_model = sharding.param_shardings(llama, mesh)
  boxed = jax.jit(lambda r: llama.init(r, tokens())["params"])(jax.random.key(0))
  assert isinstance(boxed["embed"]["embedding"], nn.LogicallyPartitioned)
  assert sharding.param_shardings(llama, mesh, boxed) == from_model
  assert sharding.param_shardings(llama, mesh, host_params) == from_model
  with pytest.raises(ValueError, match="does not have the tree structure"):
    sharding.param_shardings(llama, mesh, {"embed": host_params["embed"]})


def test_shard_batch_rejects_indivisible_batch():
  mesh = mesh_of((2, 2, 2))
  with pytest.raises(ValueError, match=r"multiple of mesh data × fsdp = 4"):
    sharding.shard_batch(mesh, {"tokens": np.zeros((6, 3), np.int32)})


def test_scanned_layers_split_the_residual_stream_over_tensor():
  """Stacked layers keep the residual stream between layers split along the length over `tensor`
  (what remat saves of each layer: not a full copy per tensor-parallel device); the loss and its
  gradient equal the single-device ones."""
  mesh = mesh_of((1, 4, 2))
  llama = model.Llama(model.LlamaConfig(**{**CFG.__dict__, "scan_layers": True, "remat": True}))
  params = jax.jit(lambda r: nn.unbox(llama.init(r, tokens())["params"]))(jax.random.key(2))
  loss = lambda p, t: jnp.mean(jnp.square(llama.apply({"params": p}, t)[0]))
  expected = jax.jit(jax.value_and_grad(loss))(params, tokens())
  step = jax.jit(jax.value_and_grad(loss))
  sharded = sharding.shard_params(params, sharding.param_shardings(llama, mesh))
  with sharding.use_mesh(mesh):
    got = step(sharded, sharding.shard_batch(mesh, tokens()))
    text = step.lower(sharded, sharding.shard_batch(mesh, tokens())).as_text()
  assert any('{"data", "fsdp"}, {"tensor"}, {}' in c for c in re.findall(r"sharding_constraint.*", text))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, expected)


def test_sampling_param_shardings_split_over_tensor_only():
  """The sampler's copy of the weights: the training layout without `fsdp` (no all-gather when
  decoding), e.g. q kernel [embed, q_heads, head_dim] -> (None, "tensor", None)."""
  mesh = mesh_of((1, 4, 2))
  shardings = sharding.sampling_param_shardings(model.Llama(CFG), mesh)
  for path, s in jax.tree_util.tree_leaves_with_path(shardings):
    name = "/".join(k.key for k in path)
    axes = tuple(None if a == "fsdp" else a for a in expected_axes(name, len(s.spec) or 1))
    assert s.is_equivalent_to(NamedSharding(mesh, P(*axes)), len(axes)), (name, s)
