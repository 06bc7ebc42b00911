"""The device mesh and THE table mapping the model's logical axes onto it.

The model names only logical axes (docs/DESIGN.md "Logical axes"); `LOGICAL_RULES` below is the one
place that says how they are laid out on the `("data", "fsdp", "tensor")` mesh (MaxText style):
changing a parallelism strategy means changing the mesh sizes in the config, or this table, never
the model.

* data: batch split, params replicated (pure data parallelism).
* fsdp: batch split and params split along `embed` (ZeRO-3 style; gathered per layer by XLA).
* tensor: heads, MLP hidden units and vocabulary split (Megatron style).

Params, optimizer state, KV caches and batches all get their shardings from here. Activations are
constrained inside the model by `nn.with_logical_constraint`, which is active only inside
`use_mesh(mesh)` (a global mesh + these rules); it is never silently skipped on CPU.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from rlef_jax import layers
from rlef_jax.model_types import KVCache

MESH_AXES = ("data", "fsdp", "tensor")
_BATCH = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # params
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # activations
    ("activation_batch", _BATCH),
    ("activation_length", None),
    ("activation_residual_length", "tensor"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # KV cache: sharded like the activations that fill it (a replicated cache is a full copy on every chip)
    ("cache_batch", _BATCH),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)

CACHE_KEY_AXES = layers.KEY_CACHE_AXES  # one layer's keys: (cache_batch, cache_kv_heads, cache_head_dim, cache_length)
CACHE_VALUE_AXES = layers.VALUE_CACHE_AXES  # one layer's values: (cache_batch, cache_kv_heads, cache_length, cache_head_dim)
CACHE_LENGTHS_AXES = ("cache_batch",)


def logical_rules() -> tuple[tuple[str, Any], ...]:
  """The logical-axis → mesh-axis rules (for `nn.logical_axis_rules` and friends)."""
  return LOGICAL_RULES


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """`(data, fsdp, tensor)` sizes from `config.mesh`; one size may be -1 ("all the rest")."""
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  desc = ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes))
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(f"config.mesh sizes must be >= 1 with at most one -1 (\"the rest\"), got {desc}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.mesh ({desc}): {num_devices} devices are not divisible by the "
                       f"fixed axis sizes (product {known}); change the mesh sizes")
    sizes[sizes.index(-1)] = num_devices // known
  elif known != num_devices:
    raise ValueError(f"config.mesh ({desc}) has {known} slots but there are {num_devices} devices; "
                     "make the product equal the device count or set one size to -1")
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A `("data", "fsdp", "tensor")` mesh over `devices` (default: all) sized by `config.mesh`."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh) -> Iterator[jax.sharding.Mesh]:
  """Makes `mesh` the global mesh and `LOGICAL_RULES` the axis rules (activates constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield mesh


def logical_sharding(mesh: jax.sharding.Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
  """The `NamedSharding` of one array whose dimensions have these logical names."""
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), LOGICAL_RULES)
  return NamedSharding(mesh, spec)


def abstract_params(model: nn.Module) -> Any:
  """`model`'s params as boxed (`nn.LogicallyPartitioned`) `ShapeDtypeStruct`s; nothing allocated."""
  tokens_BxL = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BxL))["params"]


def param_shardings(model: nn.Module, mesh: jax.sharding.Mesh, params: Any = None) -> Any:
  """`NamedSharding` pytree for `model`'s params, from their logical axis annotations.

  Args:
    model: a `Llama` or `LlamaValue` (any module whose params use `nn.with_logical_partitioning`).
    mesh: the mesh to shard over.
    params: optional boxed params (from `model.init` or `abstract_params`) to read the annotations
      from; unboxed params are accepted and only checked against the model's tree structure.
  """
  boxed = abstract_params(model)
  if params is not None:
    has_boxes = any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
    if has_boxes:
      boxed = params
    elif jax.tree.structure(nn.unbox(boxed)) != jax.tree.structure(params):
      raise ValueError("param_shardings: `params` does not have the tree structure of "
                       f"{type(model).__name__}'s params; was it built for another config?")
  specs = nn.get_partition_spec(boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def sampling_param_shardings(model: nn.Module, mesh: jax.sharding.Mesh) -> Any:
  """`param_shardings` of the sampler's copy of the weights: split over `tensor` only (`embed` not
  over `fsdp`), so a decoding step reads its weights in place and never all-gathers them."""
  rules = tuple((name, None) if name == "embed" else (name, axes) for name, axes in LOGICAL_RULES)
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_params(model)), mesh, rules)


def shard_params(params: Any, shardings: Any) -> Any:
  """Places (unboxed) params on their shardings.

  The result may share buffers with `params` (e.g. a replicated layout reuses device 0's copy):
  do not donate the result to a jitted step while still using `params`.
  """
  return jax.device_put(nn.unbox(params), shardings)


def init_params(model: nn.Module, mesh: jax.sharding.Mesh, rng: jax.Array) -> Any:
  """Initialises `model`'s params directly on their shardings (no full copy on one device)."""
  shardings = param_shardings(model, mesh)
  tokens_BxL = jnp.zeros((1, 1), jnp.int32)
  init = lambda r: nn.unbox(model.init(r, tokens_BxL)["params"])
  with use_mesh(mesh):
    return jax.jit(init, out_shardings=shardings)(rng)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def opt_state_shardings(optimizer: optax.GradientTransformation, params_shardings: Any,
                        abstract_params_tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Shardings of `optimizer.init(params)`: per-param statistics mirror their param's sharding.

  Leaves that are not param-shaped (step counts, schedule state) are replicated.
  """
  abstract_state = jax.eval_shape(optimizer.init, nn.unbox(abstract_params_tree))
  return optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_state, params_shardings,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def cache_sharding(mesh: jax.sharding.Mesh, cache: Any) -> Any:
  """Shardings for a `KVCache` (or its abstract shapes): each layer's keys by `CACHE_KEY_AXES`, its
  values by `CACHE_VALUE_AXES`, lengths by batch."""
  if not isinstance(cache, KVCache):
    raise ValueError(f"cache_sharding: expected a KVCache, got {type(cache).__name__}")
  keys, values = logical_sharding(mesh, CACHE_KEY_AXES), logical_sharding(mesh, CACHE_VALUE_AXES)
  return KVCache(tuple(keys for _ in cache.keys), tuple(values for _ in cache.values),
                       logical_sharding(mesh, CACHE_LENGTHS_AXES))


def init_cache(model_config, batch_size: int, max_length: int,
               mesh: jax.sharding.Mesh) -> Any:
  """`rlef_jax.model.init_cache` allocated directly on the cache sharding."""
  from rlef_jax import model  # pylint: disable=g-import-not-at-top
  make = lambda: model.init_cache(model_config, batch_size, max_length)
  shardings = cache_sharding(mesh, jax.eval_shape(make))
  return jax.jit(make, out_shardings=shardings)()


def data_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch-major array (`[B, ...]`): batch over data × fsdp, the rest replicated."""
  return logical_sharding(mesh, ("activation_batch",) + (None,) * (ndim - 1))


def shard_batch(mesh: jax.sharding.Mesh, batch: Any) -> Any:
  """Places every array of a batch pytree with `data_sharding`; B must divide by data × fsdp."""
  def put(x):
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    if x.ndim == 0 or x.shape[0] % split:
      raise ValueError(f"shard_batch: leading (batch) size of shape {x.shape} must be a multiple "
                       f"of mesh data × fsdp = {split}")
    return jax.device_put(x, data_sharding(mesh, x.ndim))
  return jax.tree.map(put, batch)
