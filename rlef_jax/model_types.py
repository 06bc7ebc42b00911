"""The model's plain types: `LlamaConfig` (architecture and numerics), `RopeScaling` and `KVCache`.

They sit below `rope`, `layers` and `model`, which all read them, and depend on nothing of the
project. Shape letters as in rlef_jax/layers.py.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION = ("einsum", "blocked", "dot_product", "xla", "cudnn")  # LlamaConfig.attention
# LlamaConfig.remat_policy: what a rematerialised layer keeps for its backward pass (the names of
# `jax.checkpoint_policies`): nothing (the whole layer runs again), the outputs of its weight matmuls
# (those without batch dimensions: q, k, v, o, gate, up, down; attention and the elementwise work run
# again), or every matmul's output (the attention's too).
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Hugging Face `rope_scaling` with `rope_type == "llama3"` (Llama 3.1 and 3.2)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int

  def __post_init__(self):
    if not (self.factor > 0 and 0 < self.low_freq_factor < self.high_freq_factor):
      raise ValueError(f"RopeScaling needs factor > 0 and 0 < low_freq_factor < high_freq_factor, "
                       f"got {self}")
    if self.original_max_position_embeddings <= 0:
      raise ValueError(f"RopeScaling.original_max_position_embeddings must be positive, got {self}")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture plus numerics of a Llama model.

  `head_dim=None` is resolved to `hidden_size // num_heads` at construction, so `config.head_dim` is
  always an int (note: `dataclasses.replace` keeps the resolved value).
  """
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 8192
  tie_word_embeddings: bool = False
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: bool = False
  remat_policy: str = "nothing_saveable"  # with remat: one of REMAT_POLICIES
  scan_layers: bool = False
  # Full-sequence attention (training, scoring; decoding always uses the cached einsum path):
  # "einsum" (explicit scores, float32 softmax), "blocked" (the same by query blocks, skipping the
  # scores above the diagonal block: ~2x faster on a CPU), or `jax.nn.dot_product_attention` with its
  # implementation chosen by JAX ("dot_product": cuDNN's fused kernel where it applies, else XLA),
  # or forced ("xla", "cudnn": a GPU with bf16/fp16 compute).
  attention: str = "einsum"

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "max_position_embeddings"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                       f"num_kv_heads ({self.num_kv_heads}) for grouped-query attention")
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(f"LlamaConfig.hidden_size ({self.hidden_size}) is not divisible by "
                         f"num_heads ({self.num_heads}); set head_dim explicitly")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.head_dim <= 0 or self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim must be a positive even int (RoPE rotates pairs), "
                       f"got {self.head_dim}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"LlamaConfig.{name} must be one of {sorted(DTYPES)}, "
                         f"got {getattr(self, name)!r}")
    if self.attention not in ATTENTION:
      raise ValueError(f"LlamaConfig.attention must be one of {ATTENTION}, got {self.attention!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"LlamaConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
      raise ValueError(f"LlamaConfig.rms_norm_eps and rope_theta must be positive, got "
                       f"{self.rms_norm_eps}, {self.rope_theta}")
    if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
      raise ValueError("LlamaConfig.rope_scaling must be a RopeScaling or None, got "
                       f"{type(self.rope_scaling).__name__}")

  @property
  def param_jnp_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def compute_jnp_dtype(self):
    return DTYPES[self.dtype]

  def num_params(self) -> int:
    """The policy's parameter count (`rlef_jax.model.Llama`'s params; tested equal to the count of
    its initialised shapes): embeddings, the LM head unless tied, N decoder layers, the final norm."""
    D, F, H, K, Dh = (self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                      self.head_dim)
    attention = D * H * Dh * 2 + D * K * Dh * 2  # q and o, k and v
    layer = attention + 3 * D * F + 2 * D  # gate, up, down; two RMSNorm scales
    head = 0 if self.tie_word_embeddings else D * self.vocab_size
    return self.vocab_size * D + head + self.num_layers * layer + D


@flax.struct.dataclass
class KVCache:
  """Keys/values (after RoPE) of every sequence so far, one buffer per layer in the layouts the decode
  step's two products read without copying: keys `[B, K, Dh, S]`, values `[B, K, S, Dh]`; row b fills
  slots `< lengths_B[b]`. Keys are stored transposed because the scores contract the head dim, and
  XLA's dots (the CPU's measured, BUILD_NOTES "The keys' layout") are slow when the contracted dim is
  the minor dim of the large operand: the scores of one token over 2048 slots took 4x longer with
  keys `[B, K, S, Dh]`, while the values' product, contracting the slots, is fast as it is.

  One buffer per layer (not one stacked `[N, ...]` array): a decode step writes one slot of each
  layer in place and the attention reads the layer's buffer directly, so no step copies a layer's
  cache (slicing a stacked cache, or a `[B, S, K, Dh]` layout the attention must transpose, copies it
  every step: the step then costs O(allocated slots) in memory traffic). Decoding therefore runs
  the layers unrolled (`prepare_for_decoding` unstacks scan-trained params once).
  """
  keys: tuple  # N arrays k_BxKxDhxS
  values: tuple  # N arrays v_BxKxSxDh
  lengths_B: jnp.ndarray

  @property
  def batch_size(self) -> int:
    return self.lengths_B.shape[0]

  @property
  def capacity(self) -> int:
    """S, the slots allocated per row."""
    return self.values[0].shape[2]
