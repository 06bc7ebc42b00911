"""Hugging Face interop: `config.json` <-> `LlamaConfig`, streaming safetensors load, HF export.

Loading reads one tensor at a time from memory-mapped safetensors files (single file or sharded
index), converts it to the `rlef_jax.model` layout and places it (on a target sharding when one is
given) before touching the next, so host memory never holds two copies of the model. Export writes
safetensors (sharded above `max_shard_bytes`) plus a `config.json` that
`transformers.LlamaForCausalLM.from_pretrained` loads. Every config key is handled explicitly; an
unknown key or an unsupported value raises one `ValueError` that lists all problems (a
silently ignored key is a wrong model).

HF stores projections as `[out, in]` matrices; ours are `[in..., out...]` kernels (q `[D,H,Dh]`,
k/v `[D,K,Dh]`, o `[H,Dh,D]`, MLP `[D,F]`/`[F,D]`, lm_head `[D,V]`). Both use the half-split RoPE
layout, so no q/k permutation is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from rlef_jax.model import LlamaConfig, RopeScaling

# HF LlamaConfig defaults, used for keys a config.json leaves out (as from_pretrained does).
_HF_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}
# Keys that must hold exactly one supported value (absent is fine).
_REQUIRED_VALUES = {"model_type": "llama", "hidden_act": "silu", "attention_bias": False,
                    "mlp_bias": False, "pretraining_tp": 1, "attention_dropout": 0.0}
# Keys with no effect on the forward pass; carried over on export where meaningful.
_NO_MATH_KEYS = ("architectures", "transformers_version", "torch_dtype", "dtype", "bos_token_id",
                 "eos_token_id", "pad_token_id", "use_cache", "initializer_range", "_name_or_path")
_PASSTHROUGH_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "initializer_range")
_ARCH_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
              "rope_scaling", "rope_parameters", "max_position_embeddings", "tie_word_embeddings")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_DTYPE_NAMES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _rope(hf: Mapping[str, Any], problems: list[str]) -> tuple[float, RopeScaling | None]:
  """`rope_theta` and llama3 scaling from legacy (`rope_theta` + `rope_scaling`) or v5
  (`rope_parameters`) keys."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  if hf.get("rope_parameters") and hf.get("rope_scaling"):
    problems.append("both rope_parameters and rope_scaling are set; keep one")
  nested_theta, top_theta = params.pop("rope_theta", None), hf.get("rope_theta")
  if None not in (nested_theta, top_theta) and nested_theta != top_theta:
    problems.append(f"rope_theta={top_theta} disagrees with rope_parameters' {nested_theta}")
  theta = next((t for t in (top_theta, nested_theta) if t is not None), _HF_DEFAULTS["rope_theta"])
  rope_type = params.pop("rope_type", params.pop("type", "default"))
  if params.pop("partial_rotary_factor", 1.0) != 1.0:
    problems.append("rope partial_rotary_factor must be 1.0 (Llama rotates the whole head)")
  if rope_type == "default":
    if params:
      problems.append(f"rope_type 'default' takes no parameters, got {sorted(params)}")
    return float(theta), None
  if rope_type != "llama3":
    problems.append(f"rope_type {rope_type!r} is not supported (supported: 'default', 'llama3')")
    return float(theta), None
  missing = [k for k in _LLAMA3_KEYS if k not in params]
  extra = sorted(set(params) - set(_LLAMA3_KEYS))
  if missing or extra:
    problems.append(f"llama3 rope scaling needs exactly {list(_LLAMA3_KEYS)}; missing {missing}, "
                    f"unknown {extra}")
    return float(theta), None
  return float(theta), RopeScaling(
      factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
      high_freq_factor=float(params["high_freq_factor"]),
      original_max_position_embeddings=int(params["original_max_position_embeddings"]))


def config_from_hf(hf: Mapping[str, Any], *, param_dtype: str = "float32", dtype: str = "float32",
                   remat: bool = False, scan_layers: bool = False) -> LlamaConfig:
  """A `LlamaConfig` from a HF Llama `config.json` dict; raises one ValueError listing every
  unknown key or unsupported value."""
  problems = []
  unknown = sorted(set(hf) - set(_ARCH_KEYS) - set(_REQUIRED_VALUES) - set(_NO_MATH_KEYS))
  if unknown:
    problems.append(f"unknown keys {unknown} (handled: {sorted(_ARCH_KEYS + _NO_MATH_KEYS)} and "
                    f"{sorted(_REQUIRED_VALUES)} with the values {_REQUIRED_VALUES})")
  for key, want in _REQUIRED_VALUES.items():
    if key in hf and hf[key] != want and not (key == "pretraining_tp" and hf[key] is None):
      problems.append(f"{key}={hf[key]!r} is not supported (only {want!r})")
  if hf.get("architectures") not in (None, ["LlamaForCausalLM"]):
    problems.append(f"architectures={hf['architectures']!r} is not supported "
                    "(only ['LlamaForCausalLM'])")
  theta, scaling = _rope(hf, problems)
  if problems:
    raise ValueError("Unsupported Hugging Face Llama config:\n  - " + "\n  - ".join(problems))
  get = lambda k: hf.get(k, _HF_DEFAULTS.get(k))
  heads = get("num_attention_heads")
  return LlamaConfig(
      vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
      intermediate_size=get("intermediate_size"), num_layers=get("num_hidden_layers"),
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim"), rms_norm_eps=float(get("rms_norm_eps")), rope_theta=theta,
      rope_scaling=scaling, max_position_embeddings=get("max_position_embeddings"),
      tie_word_embeddings=bool(get("tie_word_embeddings")), param_dtype=param_dtype, dtype=dtype,
      remat=remat, scan_layers=scan_layers)


def config_to_hf(config: LlamaConfig, *, torch_dtype: str = "float32",
                 base: Mapping[str, Any] | None = None) -> dict:
  """A HF `config.json` dict (legacy `rope_theta`/`rope_scaling` keys, which transformers 4.x and
  5.x both read); token ids and `initializer_range` are carried over from `base`."""
  out = {k: base[k] for k in _PASSTHROUGH_KEYS if base and k in base}
  scaling = None if config.rope_scaling is None else {
      "rope_type": "llama3", **dataclasses.asdict(config.rope_scaling)}
  out.update(
      architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=config.vocab_size,
      hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, hidden_act="silu",
      rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta, rope_scaling=scaling,
      max_position_embeddings=config.max_position_embeddings,
      tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, mlp_bias=False,
      attention_dropout=0.0, pretraining_tp=1, torch_dtype=torch_dtype)
  return out


def read_config(directory: str | os.PathLike) -> dict:
  """The `config.json` dict of a HF checkpoint directory."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: point at a Hugging Face Llama checkpoint directory")
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One HF tensor and where it lives in our params: `path` (under the layer for layer tensors),
  `layer` (None for global tensors), `n_in` (number of leading input axes of our kernel; None for
  tensors stored identically)."""
  name: str
  path: tuple[str, ...]
  layer: int | None
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  n_in: int | None


def _tensors(cfg: LlamaConfig) -> list[_Tensor]:
  D, F, V, H, K, Dh = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_heads,
                       cfg.num_kv_heads, cfg.head_dim)
  out = [_Tensor("model.embed_tokens.weight", ("embed", "embedding"), None, (V, D), (V, D), None)]
  per_layer = [
      ("self_attn.q_proj.weight", ("attn", "q", "kernel"), (H * Dh, D), (D, H, Dh), 1),
      ("self_attn.k_proj.weight", ("attn", "k", "kernel"), (K * Dh, D), (D, K, Dh), 1),
      ("self_attn.v_proj.weight", ("attn", "v", "kernel"), (K * Dh, D), (D, K, Dh), 1),
      ("self_attn.o_proj.weight", ("attn", "o", "kernel"), (D, H * Dh), (H, Dh, D), 2),
      ("mlp.gate_proj.weight", ("mlp", "gate", "kernel"), (F, D), (D, F), 1),
      ("mlp.up_proj.weight", ("mlp", "up", "kernel"), (F, D), (D, F), 1),
      ("mlp.down_proj.weight", ("mlp", "down", "kernel"), (D, F), (F, D), 1),
      ("input_layernorm.weight", ("input_norm", "scale"), (D,), (D,), None),
      ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), (D,), (D,), None)]
  for i in range(cfg.num_layers):
    out += [_Tensor(f"model.layers.{i}.{n}", p, i, hs, s, k) for n, p, hs, s, k in per_layer]
  out.append(_Tensor("model.norm.weight", ("norm", "scale"), None, (D,), (D,), None))
  if not cfg.tie_word_embeddings:
    out.append(_Tensor("lm_head.weight", ("lm_head", "kernel"), None, (V, D), (D, V), 1))
  return out


def _params_path(t: _Tensor, cfg: LlamaConfig) -> tuple[str, ...]:
  if t.layer is None:
    return t.path
  return ("layers",) + t.path if cfg.scan_layers else (f"layers_{t.layer}",) + t.path


def _to_ours(x: np.ndarray, t: _Tensor) -> np.ndarray:
  return x if t.n_in is None else x.T.reshape(t.shape)


def _to_hf(x: np.ndarray, t: _Tensor) -> np.ndarray:
  if t.n_in is None:
    return x
  return x.reshape(math.prod(t.shape[:t.n_in]), math.prod(t.shape[t.n_in:])).T


def _read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  return header, 8 + n


def _iter_safetensors(directory: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
  """`(name, memory-mapped array)` for every tensor of a checkpoint directory, one at a time."""
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(os.path.join(directory, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    raise FileNotFoundError(f"{directory} has neither model.safetensors nor "
                            "model.safetensors.index.json (only safetensors checkpoints load)")
  for file in files:
    path = os.path.join(directory, file)
    header, start = _read_header(path)
    for name, info in header.items():
      if info["dtype"] not in _ST_DTYPES:
        raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
      begin, _ = info["data_offsets"]
      yield name, np.memmap(path, dtype=_ST_DTYPES[info["dtype"]], mode="r",
                            offset=start + begin, shape=tuple(info["shape"]))


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _insert(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _place(x: np.ndarray, sharding: Any) -> jax.Array:
  return jnp.asarray(x) if sharding is None else jax.device_put(x, sharding)


def _layer_sharding(stacked: Any) -> Any:
  """The sharding of one layer slice of a scan-stacked parameter."""
  if isinstance(stacked, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(stacked.mesh, jax.sharding.PartitionSpec(*stacked.spec[1:]))
  return stacked


def load_params(directory: str | os.PathLike, config: LlamaConfig, *, shardings: Any = None) -> dict:
  """Streams a HF safetensors checkpoint into (unboxed) `Llama` params in `config.param_dtype`.

  `shardings`: optional pytree of `jax.sharding.Sharding` shaped like the params; each tensor is
  placed directly on its sharding. Scan-stacked layers are placed per layer, then stacked.
  """
  expected = {t.name: t for t in _tensors(config)}
  dtype = np.dtype(config.param_jnp_dtype)
  params: dict = {}
  pending: dict[tuple[str, ...], list] = {}
  seen = set()
  for name, array in _iter_safetensors(directory):
    if name not in expected:
      if name.endswith("rotary_emb.inv_freq") or (
          name == "lm_head.weight" and config.tie_word_embeddings):
        continue
      raise ValueError(f"{directory}: unexpected tensor {name!r} for this Llama config (is the "
                       f"config.json from the same checkpoint?)")
    t = expected[name]
    if tuple(array.shape) != t.hf_shape:
      raise ValueError(f"{directory}: tensor {name} has shape {tuple(array.shape)}, the config "
                       f"implies {t.hf_shape}")
    seen.add(name)
    path = _params_path(t, config)
    sharding = None if shardings is None else _lookup(shardings, path)
    x = np.asarray(_to_ours(array, t), dtype=dtype)
    if config.scan_layers and t.layer is not None:
      slots = pending.setdefault(path, [None] * config.num_layers)
      slots[t.layer] = _place(x, _layer_sharding(sharding))
      if all(s is not None for s in slots):
        stack = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)
        _insert(params, path, stack(*pending.pop(path)))
    else:
      _insert(params, path, _place(x, sharding))
    del x, array
  missing = [n for n in expected if n not in seen]
  if missing:
    raise ValueError(f"{directory}: missing tensors {missing[:8]}{'...' if len(missing) > 8 else ''}")
  return params


def load(directory: str | os.PathLike, *, shardings: Any = None, **config_kwargs
         ) -> tuple[LlamaConfig, dict]:
  """`(config, params)` from a HF checkpoint directory; `config_kwargs` go to `config_from_hf`."""
  config = config_from_hf(read_config(directory), **config_kwargs)
  return config, load_params(directory, config, shardings=shardings)


def _write_shard(path: str, tensors: list[tuple[_Tensor, tuple[str, ...]]], params: dict,
                 config: LlamaConfig, dtype: np.dtype) -> None:
  header, offset = {}, 0
  for t, _ in tensors:
    size = math.prod(t.hf_shape) * dtype.itemsize
    header[t.name] = {"dtype": _ST_NAMES[dtype], "shape": list(t.hf_shape),
                      "data_offsets": [offset, offset + size]}
    offset += size
  header["__metadata__"] = {"format": "pt"}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for t, path_in_params in tensors:
      leaf = _lookup(params, path_in_params)
      if config.scan_layers and t.layer is not None:
        leaf = leaf[t.layer]
      x = np.asarray(jax.device_get(leaf))
      if x.shape != t.shape:
        raise ValueError(f"params{list(path_in_params)} has shape {x.shape}, the config implies "
                         f"{t.shape}")
      f.write(np.ascontiguousarray(_to_hf(x, t), dtype=dtype).tobytes())


def save(directory: str | os.PathLike, params: Any, config: LlamaConfig, *,
         dtype: str | None = None, max_shard_bytes: int = 5 * 10**9,
         base_config: Mapping[str, Any] | None = None) -> None:
  """Writes a HF checkpoint (`config.json` + safetensors, sharded with an index above
  `max_shard_bytes`) that `LlamaForCausalLM.from_pretrained` loads. Tensors are fetched from the
  devices one at a time. `dtype` defaults to `config.param_dtype`; `base_config` supplies token ids."""
  dtype_name = dtype or config.param_dtype
  if dtype_name not in _DTYPE_NAMES:
    raise ValueError(f"export dtype must be one of {sorted(_DTYPE_NAMES)}, got {dtype_name!r}")
  np_dtype = np.dtype(_DTYPE_NAMES[dtype_name])
  params = nn.meta.unbox(params)
  tensors = [(t, _params_path(t, config)) for t in _tensors(config)]
  for _, path in tensors:
    try:
      _lookup(params, path)
    except (KeyError, TypeError):
      raise ValueError(f"params have no entry {'/'.join(path)}; expected Llama params for "
                       f"{config}") from None
  shards: list[list] = [[]]
  size = 0
  for t, path in tensors:
    nbytes = math.prod(t.hf_shape) * np_dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((t, path))
    size += nbytes
  os.makedirs(directory, exist_ok=True)
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  for name, shard in zip(names, shards):
    _write_shard(os.path.join(directory, name), shard, params, config, np_dtype)
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(math.prod(t.hf_shape) for t, _ in tensors) *
                          np_dtype.itemsize},
             "weight_map": {t.name: name for name, shard in zip(names, shards) for t, _ in shard}}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
      json.dump(index, f, indent=2)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config_to_hf(config, torch_dtype=dtype_name, base=base_config), f, indent=2)
