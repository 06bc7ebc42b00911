"""Jitted batched generation with the KV cache (paper §2.1 multi-turn dialogues, App. A.1 sampling).

`generate` appends one right-padded chunk of new tokens per row to an existing `KVCache` in a single
model call (prefill), then decodes in a `lax.while_loop` until every row has stopped. A dialogue's next
turn is another `generate` call on the returned cache with the feedback tokens as the new chunk: the
history is never recomputed. After a call the cache holds, per row, the old tokens, the new chunk and
every generated token (the stop token included), so the next chunk continues right after them.

`feed` appends a chunk without sampling: a prompt longer than the caller wants to prefill at once is
fed in pieces, and `generate` takes the last one (the attention scores of a call stay bounded).

Log-probs are returned under two distributions: the one actually sampled from (temperature-scaled,
top-p-truncated and renormalised; 0 for greedy, a point mass) and the raw model at temperature 1, which
is the behaviour policy π_b of the PPO correction when training samples at T = 1 (paper §3).

Randomness is per row: row b's t-th token of a call is drawn with `fold_in(key_b, t)`, so what a row
samples depends on its own key and tokens only, never on which other rows share its batch (the
rollout derives `key_b` from the episode's index and turn).

Decoding runs the layers unrolled on a per-layer KV cache (`rlef_jax.model.KVCache`): `prepare`
turns the policy's params into the sampling model's once per round (scan-stacked layers unstacked,
floating params cast to the compute dtype), so no decode step slices, casts or copies weights or cache.

Shape letters: B rows, L new tokens, S cache length, T generated tokens (`max_new_tokens`), V vocab.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlef_jax import distributed
from rlef_jax import model as model_lib
from rlef_jax.model import KVCache


@flax.struct.dataclass
class SampleOutput:
  """What `generate` returns; positions at or past `lengths_B[b]` hold `pad_id` and log-prob 0.

  `stopped_B`: the row ended on a stop id (its last token). `out_of_cache_B`: the row was cut short
  because its cache was full (one slot per row stays free, see `generate`).
  """
  tokens_BxT: jax.Array
  logprobs_BxT: jax.Array
  raw_logprobs_BxT: jax.Array
  lengths_B: jax.Array
  stopped_B: jax.Array
  out_of_cache_B: jax.Array
  cache: KVCache


NUCLEUS_PREFILTER = 256  # the nucleus is looked for among this many most likely tokens first


def _nucleus_threshold_B(sorted_BxK, logz_B, top_p):
  """Per row: the smallest value of the nucleus among `sorted_BxK` (descending, the K largest scaled
  logits) and whether those K tokens hold at least `top_p` of the mass (else the nucleus is wider)."""
  probs_BxK = jnp.exp(sorted_BxK - logz_B[:, None])
  mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
  num_kept_B = jnp.maximum(jnp.sum(mass_before_BxK < top_p, axis=-1), 1)
  threshold_B = jnp.take_along_axis(sorted_BxK, num_kept_B[:, None] - 1, axis=-1)
  return threshold_B, jnp.sum(probs_BxK, axis=-1) >= top_p


def sampling_logprobs_BxV(logits_BxV: jax.Array, temperature: float, top_p: float) -> jax.Array:
  """Log-probs of the distribution sampled from: softmax(logits / temperature) restricted to the
  nucleus (the fewest most-likely tokens whose mass reaches `top_p`, ties at its edge included) and
  renormalised; −inf outside. Needs temperature > 0.

  The nucleus is found among the `NUCLEUS_PREFILTER` most likely tokens (`lax.top_k`); only when those
  hold less than `top_p` of the mass (a flat distribution) is the whole vocabulary sorted. Both give
  the same nucleus; sorting 49k logits per row every step cost ~160 ms at batch 12 on a 2-core CPU.
  """
  scaled_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_p < 1.0:
    logz_B = jax.nn.logsumexp(scaled_BxV, axis=-1)
    k = min(NUCLEUS_PREFILTER, scaled_BxV.shape[-1])
    threshold_B, enough_B = _nucleus_threshold_B(jax.lax.top_k(scaled_BxV, k)[0], logz_B, top_p)
    threshold_B = jax.lax.cond(
        jnp.all(enough_B), lambda: threshold_B,
        lambda: _nucleus_threshold_B(-jnp.sort(-scaled_BxV, axis=-1), logz_B, top_p)[0])
    scaled_BxV = jnp.where(scaled_BxV >= threshold_B, scaled_BxV, -jnp.inf)
  return jax.nn.log_softmax(scaled_BxV, axis=-1)


def prepare(params: Any, config: model_lib.LlamaConfig, mesh: Optional[jax.sharding.Mesh] = None
            ) -> tuple[Any, nn.Module]:
  """(sampling params, sampling model) for the policy's `params` of a `config` model: layers unrolled
  (`model.unstack_layers`) and floating params in the compute dtype, made once (e.g. per round) so
  that decoding neither slices stacked layers nor casts weights at every step. With a `mesh` the
  copy is laid out by `sharding.sampling_param_shardings` (split over `tensor` only): decoding then
  never gathers weights, at the cost of a copy that is not split over `fsdp`."""
  dtype = config.compute_jnp_dtype
  cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x
  params = nn.meta.unbox(params)
  model = model_lib.Llama(model_lib.decoding_config(config))
  convert = lambda p: jax.tree.map(cast, model_lib.unstack_layers(p))
  if mesh is not None:
    from rlef_jax import sharding  # pylint: disable=g-import-not-at-top
    return jax.jit(convert, out_shardings=sharding.sampling_param_shardings(model, mesh))(params), model
  if config.scan_layers or any(cast(x) is not x for x in jax.tree.leaves(params)):
    params = jax.jit(convert)(params)
  return params, model


def row_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """`[B]` typed keys from one key (`fold_in(rng, row)`), a `[B]` key array, or raw `[B, 2]` key data."""
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if rng.ndim == 0:
      return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch_size))
    return rng
  return jax.random.wrap_key_data(rng.astype(jnp.uint32))


DRAWS = ("gumbel", "blocked")  # how a token is drawn at temperature > 0 (`generate`'s `draw`)


def _block_size(vocab_size: int) -> int:
  """The blocked draw's block: the power of two nearest above sqrt(V) (V = 49,152: 256 tokens in 192
  blocks; 128,256: 512 in 251), so both levels draw few numbers."""
  size = 1
  while size * size < vocab_size:
    size *= 2
  return size


def blocked_draw_B(keys_B: jax.Array, logq_BxV: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(token, log normaliser) per row: an exact draw from softmax(`logq_BxV`) in two levels.

  The vocabulary is cut into blocks of `_block_size(V)` tokens; a block is drawn by its mass
  (Gumbel-max over the blocks' log-sum-exps), then a token inside it by its logit (Gumbel-max over
  the block). P(token v in block b) = (m_b / sum m) * (p_v / m_b) = p_v: the same distribution as
  one Gumbel-max over V (`jax.random.categorical`), with ~2 sqrt(V) random numbers a row instead of V
  (at V = 49k, drawing V threefry numbers was ~27% of a CPU decode step). Row b draws with
  `keys_B[b]`, so its token depends on its key and logits only. `logq_BxV` may hold -inf (outside a
  nucleus): empty blocks have mass -inf and are never drawn. The log normaliser is logsumexp over V
  (from the blocks' masses), so a token's log-prob is `logq[token] - logz` without a V-wide softmax.
  """
  B, V = logq_BxV.shape
  K = _block_size(V)
  N = -(-V // K)
  logq_BxNxK = jnp.pad(logq_BxV, ((0, 0), (0, N * K - V)), constant_values=-jnp.inf).reshape(B, N, K)
  mass_BxN = jax.nn.logsumexp(logq_BxNxK, axis=-1)

  def draw(key, mass_N, logq_NxK):
    key_block, key_token = jax.random.split(key)
    block = jnp.argmax(mass_N + jax.random.gumbel(key_block, (N,)))
    logq_K = jax.lax.dynamic_index_in_dim(logq_NxK, block, axis=0, keepdims=False)
    return block * K + jnp.argmax(logq_K + jax.random.gumbel(key_token, (K,)))

  token_B = jax.vmap(draw)(keys_B, mass_BxN, logq_BxNxK).astype(jnp.int32)
  return token_B, jax.nn.logsumexp(mass_BxN, axis=-1)


def _sample_B(logits_BxV, keys_B, step_B, temperature, top_p, draw="gumbel"):
  """(token, log-prob under the sampling distribution, log-prob under the raw T = 1 model); row b
  draws with `fold_in(keys_B[b], step_B[b])`, by `draw` (`DRAWS`: "gumbel" = one Gumbel-max over the
  vocabulary, `jax.random.categorical`; "blocked" = `blocked_draw_B`, the same distribution with
  other random numbers)."""
  if temperature == 0.0:
    raw_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logp_B = jnp.zeros(token_B.shape, jnp.float32)
  elif draw == "blocked":
    logits_BxV = logits_BxV.astype(jnp.float32)
    if top_p < 1.0:
      scaled_BxV = sampling_logprobs_BxV(logits_BxV, temperature, top_p)
    else:
      scaled_BxV = logits_BxV / temperature if temperature != 1.0 else logits_BxV
    token_B, logz_B = blocked_draw_B(jax.vmap(jax.random.fold_in)(keys_B, step_B), scaled_BxV)
    logp_B = jnp.take_along_axis(scaled_BxV, token_B[:, None], axis=-1)[:, 0] - logz_B
    if temperature == 1.0 and top_p == 1.0:  # the sampling distribution is the raw model
      return token_B, logp_B, logp_B
    raw_B = (jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0]
             - jax.nn.logsumexp(logits_BxV, axis=-1))
    return token_B, logp_B, raw_B
  else:
    raw_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    logq_BxV = sampling_logprobs_BxV(logits_BxV, temperature, top_p)
    draw_one = lambda key, step, logq_V: jax.random.categorical(jax.random.fold_in(key, step), logq_V)
    token_B = jax.vmap(draw_one)(keys_B, step_B, logq_BxV).astype(jnp.int32)
    logp_B = jnp.take_along_axis(logq_BxV, token_B[:, None], axis=-1)[:, 0]
  raw_B = jnp.take_along_axis(raw_BxV, token_B[:, None], axis=-1)[:, 0]
  return token_B, logp_B, raw_B


_STATIC = ("model", "max_new_tokens", "temperature", "top_p", "draw", "stop_ids", "pad_id", "mesh",
           "attend_slots")


def _is_stop(token_B, stop_ids):
  stop_ids_K = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
  return jnp.any(token_B[:, None] == stop_ids_K[None, :], axis=-1)


@functools.partial(jax.jit, donate_argnames=("cache",), static_argnames=_STATIC)
def _prefill(params, cache, new_tokens_BxL, num_new_B, active_B, keys_B, *, model, max_new_tokens,
             temperature, top_p, draw, stop_ids, pad_id, mesh, attend_slots):
  """Appends the chunk and samples each active row's first token: the decoding carry."""
  del mesh  # only part of the compilation key: tracing under a mesh adds sharding constraints
  S, T = cache.capacity, max_new_tokens
  index_T = jnp.arange(T, dtype=jnp.int32)
  last_B = jnp.maximum(num_new_B - 1, 0)
  logits_Bx1xV, cache = model.apply({"params": params}, new_tokens_BxL, cache=cache,
                                    num_new_B=num_new_B, logits_at_B=last_B, attend_slots=attend_slots)
  # Each generated token is written to the cache; a row keeps one slot free because the model
  # writes a (discarded) pad token at every row's end in each decoding step.
  budget_B = jnp.where(active_B, jnp.clip(S - 1 - cache.lengths_B, 0, T), 0)
  token_B, logp_B, raw_B = _sample_B(logits_Bx1xV[:, 0], keys_B, jnp.zeros_like(num_new_B), temperature,
                                     top_p, draw)
  go_B = budget_B > 0
  first_BxT = (index_T[None, :] == 0) & go_B[:, None]
  n_B = go_B.astype(jnp.int32)
  stopped_B = go_B & _is_stop(token_B, stop_ids)
  return dict(tokens_BxT=jnp.where(first_BxT, token_B[:, None], pad_id).astype(jnp.int32),
              logprobs_BxT=jnp.where(first_BxT, logp_B[:, None], 0.0),
              raw_logprobs_BxT=jnp.where(first_BxT, raw_B[:, None], 0.0),
              n_B=n_B, stopped_B=stopped_B, finished_B=~go_B | stopped_B | (n_B >= budget_B),
              pending_B=go_B, last_B=jnp.where(go_B, token_B, pad_id), budget_B=budget_B, cache=cache)


@functools.partial(jax.jit, donate_argnames=("cache",), static_argnames=("model", "mesh", "attend_slots"))
def _feed(params, cache, new_tokens_BxL, num_new_B, *, model, mesh, attend_slots):
  """Appends the chunk to the cache, nothing sampled (logits at one position, discarded)."""
  del mesh  # only part of the compilation key, as in `_prefill`
  _, cache = model.apply({"params": params}, new_tokens_BxL, cache=cache, num_new_B=num_new_B,
                         logits_at_B=jnp.zeros_like(num_new_B), attend_slots=attend_slots)
  return cache


@functools.partial(jax.jit, donate_argnames=("carry",), static_argnames=_STATIC)
def _decode(params, carry, keys_B, max_steps, *, model, max_new_tokens, temperature, top_p, draw,
            stop_ids, pad_id, mesh, attend_slots):
  """At most `max_steps` decoding steps (a dynamic bound: no recompilation), while any row is pending."""
  del mesh, max_new_tokens
  T = carry["tokens_BxT"].shape[1]
  index_T = jnp.arange(T, dtype=jnp.int32)

  def cond(state):
    c, steps = state
    return jnp.any(c["pending_B"]) & (steps < max_steps)

  def body(state):
    c, steps = state
    logits_Bx1xV, cache = model.apply({"params": params}, c["last_B"][:, None], cache=c["cache"],
                                      num_new_B=c["pending_B"].astype(jnp.int32),
                                      attend_slots=attend_slots)
    token_B, logp_B, raw_B = _sample_B(logits_Bx1xV[:, 0], keys_B, c["n_B"], temperature, top_p, draw)
    go_B = ~c["finished_B"]
    at_BxT = (index_T[None, :] == c["n_B"][:, None]) & go_B[:, None]
    n_B = c["n_B"] + go_B
    stop_B = go_B & _is_stop(token_B, stop_ids)
    return dict(
        tokens_BxT=jnp.where(at_BxT, token_B[:, None], c["tokens_BxT"]),
        logprobs_BxT=jnp.where(at_BxT, logp_B[:, None], c["logprobs_BxT"]),
        raw_logprobs_BxT=jnp.where(at_BxT, raw_B[:, None], c["raw_logprobs_BxT"]),
        n_B=n_B, stopped_B=c["stopped_B"] | stop_B,
        finished_B=c["finished_B"] | stop_B | (n_B >= c["budget_B"]),
        pending_B=go_B, last_B=jnp.where(go_B, token_B, pad_id), budget_B=c["budget_B"],
        cache=cache), steps + 1

  carry, _ = jax.lax.while_loop(cond, body, (carry, jnp.zeros((), jnp.int32)))
  return carry


@jax.jit
def _take_rows(carry, keys_B, rows_R, pad_R):
  """The carry (cache included) and keys of rows `rows_R`; rows with `pad_R` are idle padding."""
  take = lambda x: x[rows_R]
  out = jax.tree.map(take, {k: v for k, v in carry.items() if k != "cache"})
  cache = carry["cache"]
  out["cache"] = KVCache(tuple(map(take, cache.keys)), tuple(map(take, cache.values)), take(cache.lengths_B))
  out["pending_B"] = out["pending_B"] & ~pad_R
  out["finished_B"] = out["finished_B"] | pad_R
  return out, take(keys_B)


@functools.partial(jax.jit, donate_argnames=("full",))
def _put_rows(full, part, rows_R, real_R):
  """Writes the rows of `part` (a compacted carry) back into `full` at `rows_R` (padding skipped)."""
  rows_R = jnp.where(real_R, rows_R, full["n_B"].shape[0])  # out of range: dropped

  def put(f, p):
    return f.at[rows_R].set(p, mode="drop")

  out = jax.tree.map(put, {k: v for k, v in full.items() if k != "cache"},
                     {k: v for k, v in part.items() if k != "cache"})
  fc, pc = full["cache"], part["cache"]
  out["cache"] = KVCache(tuple(map(put, fc.keys, pc.keys)), tuple(map(put, fc.values, pc.values)),
                         put(fc.lengths_B, pc.lengths_B))
  return out


def _compact_size(live: int, multiple: int) -> int:
  """The batch a compacted decode runs: `multiple` times a power of two, at least `live` rows."""
  size = multiple
  while size < live:
    size *= 2
  return size


def _run(params, cache, new_tokens_BxL, num_new_B, active_B, keys_B, *, segment, compact, **static):
  """Prefill, then decoding in segments of `segment` steps; when at most half the batch is still
  decoding, the live rows continue as a smaller batch (their carry and cache gathered; written back
  at the end), so rows that stopped early stop costing compute."""
  carry = _prefill(params, cache, new_tokens_BxL, num_new_B, active_B, keys_B, **static)
  if not compact:
    # One decoding loop to the end, with no look from the host: several processes (each holding
    # only its own rows) run it in lockstep, its stop condition being global.
    c = _decode(params, carry, keys_B, static["max_new_tokens"] + 1, **static)
    return _output(c, active_B, static["max_new_tokens"])
  B = num_new_B.shape[0]
  full, rows = None, None  # the full-size carry while a compacted one decodes; its rows
  part, part_keys = carry, keys_B
  multiple = compact or 1
  while True:
    pending = np.asarray(jax.device_get(part["pending_B"]))
    if not pending.any():
      break
    live = np.flatnonzero(pending)
    size = _compact_size(len(live), multiple)
    if compact and size <= pending.shape[0] // 2:
      if full is None:
        full, base = part, np.arange(B)
      else:
        full = _put_rows(full, part, jnp.asarray(rows), jnp.asarray(rows < B))
        base = rows
      picked = np.concatenate([live, np.full(size - len(live), live[0])])
      rows = np.where(np.arange(size) < len(live), base[picked], B)  # B marks padding
      part, part_keys = _take_rows(full, keys_B, jnp.asarray(np.minimum(rows, B - 1)),
                                   jnp.asarray(rows >= B))
    part = _decode(params, part, part_keys, segment, **static)
  if full is not None:
    part = _put_rows(full, part, jnp.asarray(rows), jnp.asarray(rows < B))
  return _output(part, active_B, static["max_new_tokens"])


def _output(c, active_B, max_new_tokens):
  T = max_new_tokens
  out_of_cache_B = active_B & ~c["stopped_B"] & (c["n_B"] == c["budget_B"]) & (c["budget_B"] < T)
  return SampleOutput(c["tokens_BxT"], c["logprobs_BxT"], c["raw_logprobs_BxT"], c["n_B"],
                      c["stopped_B"], out_of_cache_B, c["cache"])


def attend_window(lengths_B: np.ndarray, num_new_B: np.ndarray, max_new_tokens: int, capacity: int,
                  bucket: int = 128) -> int:
  """The cache slots a call can touch: every row's filled part, its new chunk, the tokens it may
  generate and the free slot, rounded up to `bucket` times a power of two (few compilations), at
  most the capacity. Attention over only these makes a step's cost independent of the capacity."""
  needed = int(np.max(lengths_B + num_new_B)) + max_new_tokens + 1
  window = bucket
  while window < needed:
    window *= 2
  return min(window, capacity)


def _check_inputs(cache, new_tokens_BxL, num_new_B, active_B, max_new_tokens, temperature,
                  top_p, global_shapes) -> None:
  """`num_new_B`, `active_B`: this process's rows as NumPy; `global_shapes`: their global shapes."""
  if not isinstance(cache, KVCache):
    raise ValueError(f"generate needs a rlef_jax.model.KVCache (model.init_cache), got "
                     f"{type(cache).__name__}")
  if new_tokens_BxL.ndim != 2 or new_tokens_BxL.shape[1] < 1:
    raise ValueError(f"new_tokens_BxL must be [batch, length >= 1], got shape {new_tokens_BxL.shape}")
  B, L = new_tokens_BxL.shape
  S = cache.capacity
  if cache.lengths_B.shape != (B,):
    raise ValueError(f"cache has batch size {cache.lengths_B.shape[0]} but new_tokens_BxL has {B} "
                     "rows; build the cache with init_cache(config, batch_size, max_length)")
  if tuple(global_shapes[0]) != (B,) or tuple(global_shapes[1]) != (B,):
    raise ValueError(f"num_new_B and active_B must have shape ({B},), got {tuple(global_shapes[0])} "
                     f"and {tuple(global_shapes[1])}")
  if np.any(num_new_B < 0) or np.any(num_new_B > L):
    raise ValueError(f"num_new_B must lie in [0, {L}] (the chunk length), got {num_new_B.tolist()}")
  if np.any(active_B & (num_new_B == 0)):
    rows = np.flatnonzero(active_B & (num_new_B == 0)).tolist()
    raise ValueError(f"rows {rows} are active but have num_new_B == 0: a row continues from its last "
                     "new token, so give it at least one (or mark it inactive with active_B)")
  # Padding past a row's real tokens may run off the cache end: the model drops those writes.
  lengths_B = distributed.host_local(cache.lengths_B)
  if np.any(lengths_B + num_new_B > S - 1):
    raise ValueError(f"the cache is too short: after the new chunk a row would hold "
                     f"{int((lengths_B + num_new_B).max())} of {S} slots and one must stay free; "
                     "allocate a longer cache")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def _donatable(cache: KVCache) -> KVCache:
  """`cache` with distinct buffers: one buffer cannot be donated twice."""
  buffers = [*cache.keys, *cache.values]
  if len({id(b) for b in buffers}) < len(buffers):
    cache = cache.replace(values=tuple(jnp.copy(v) for v in cache.values))
  return cache


def _mesh_context(mesh: Optional[jax.sharding.Mesh]):
  if mesh is None:
    return contextlib.nullcontext()
  from rlef_jax import sharding  # pylint: disable=g-import-not-at-top
  return sharding.use_mesh(mesh)


def feed(params: Any, cache: KVCache, new_tokens_BxL, num_new_B, *, model: nn.Module,
         mesh: Optional[jax.sharding.Mesh] = None) -> KVCache:
  """Appends `new_tokens_BxL` (right-padded; row b's first `num_new_B[b]` tokens are real, 0 = none)
  to `cache` without sampling, and returns the cache (`cache` is DONATED).

  A prompt too long to prefill in one call is fed in pieces this way first, `generate` then taking
  its last piece: a call's attention scores (rows × heads × new tokens × slots) stay bounded
  (`RolloutSettings.prefill_chunk`). Arguments as in `generate`."""
  new_tokens_BxL = jnp.asarray(new_tokens_BxL, jnp.int32)
  num_new_np = distributed.host_local(num_new_B).astype(np.int32)
  _check_inputs(cache, new_tokens_BxL, num_new_np, np.zeros(num_new_np.shape, bool), 1, 1.0, 1.0,
                global_shapes=(np.shape(num_new_B), np.shape(num_new_B)))
  window = distributed.agree_max(attend_window(distributed.host_local(cache.lengths_B), num_new_np, 0,
                                               cache.capacity))
  with _mesh_context(mesh):
    return _feed(params, _donatable(cache), new_tokens_BxL, jnp.asarray(num_new_B, jnp.int32),
                 model=model, mesh=mesh, attend_slots=window)


def generate(params: Any, cache: KVCache, new_tokens_BxL, num_new_B, rng: jax.Array, *,
             model: nn.Module, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             stop_ids: Sequence[int] = (), pad_id: int = 0, active_B=None,
             mesh: Optional[jax.sharding.Mesh] = None, segment: int = 64,
             compact_rows: bool = True, draw: str = "gumbel") -> SampleOutput:
  """Appends `new_tokens_BxL` to `cache` and samples up to `max_new_tokens` tokens per active row.

  Args:
    params: the policy's params (`model.apply({"params": params}, ...)`).
    cache: the rows' KV cache; DONATED (use the returned `SampleOutput.cache`).
    new_tokens_BxL: right-padded chunk; row b's first `num_new_B[b]` tokens are real.
    num_new_B: real tokens per row; 0 only for inactive rows (their cache is left as it was).
    rng: PRNG key for sampling (unused when temperature is 0): one key (row b then uses
      `fold_in(rng, b)`), or one per row (a `[B]` key array or raw `[B, 2]` uint32 key data).
    model: the `Llama` module, layers unrolled (`prepare` gives it with the matching params).
    max_new_tokens: most tokens generated per row (static: one compilation per value).
    temperature: 0 = greedy (sampling log-probs are then 0); training uses 1 (paper App. A.1).
    top_p: nucleus mass, 1 = off (evaluation uses 0.95 at temperature 0.2, paper §3.1).
    stop_ids: a row ends after emitting one of these (e.g. `<|eot_id|>`, `<|end_of_text|>`).
    pad_id: written after a row's end.
    active_B: rows to generate for (default all); inactive rows generate nothing.
    mesh: when given, tracing runs under `sharding.use_mesh(mesh)`, so activations and the cache are
      constrained by the logical-axis rules; pass params/cache already placed on their shardings.
    segment: when compacting, decoding steps between two looks at which rows are still decoding.
    compact_rows: when at most half the rows still decode, continue with those rows only (a smaller
      batch; outputs and cache are the same). One process only.
    draw: how a token is drawn at temperature > 0 (`DRAWS`): "gumbel", one Gumbel-max over the
      vocabulary (`jax.random.categorical`), or "blocked", the same distribution drawn in two levels
      with ~2 sqrt(V) random numbers a row (`blocked_draw_B`; other tokens for the same key).

  A row stops at a stop id, at `max_new_tokens`, or when its cache has one free slot left (flagged
  in `out_of_cache_B`). Inputs are checked on the host first (this reads `cache.lengths_B`).
  """
  new_tokens_BxL = jnp.asarray(new_tokens_BxL, jnp.int32)
  if active_B is None:
    active_B = np.ones(np.shape(num_new_B), bool)
  # Several processes pass global arrays (rlef_jax.distributed); each checks its own rows.
  num_new_np = distributed.host_local(num_new_B).astype(np.int32)
  active_np = distributed.host_local(active_B).astype(bool)
  _check_inputs(cache, new_tokens_BxL, num_new_np, active_np, max_new_tokens, temperature, top_p,
                global_shapes=(np.shape(num_new_B), np.shape(active_B)))
  if draw not in DRAWS:
    raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}")
  stop_ids = tuple(sorted({int(t) for t in stop_ids}))
  cache = _donatable(cache)
  keys_B = row_keys(rng, new_tokens_BxL.shape[0])
  window = distributed.agree_max(attend_window(distributed.host_local(cache.lengths_B), num_new_np,
                                               int(max_new_tokens), cache.capacity))
  # Compaction gathers rows across the batch: one process only (other processes hold other rows);
  # a compacted batch stays a multiple of the data-parallel size.
  compact = 0
  if compact_rows and not distributed.is_multiprocess():
    compact = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  with _mesh_context(mesh):
    return _run(params, cache, new_tokens_BxL, jnp.asarray(num_new_B, jnp.int32),
                jnp.asarray(active_B, bool), keys_B, segment=int(segment), compact=compact,
                model=model, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                top_p=float(top_p), draw=draw, stop_ids=stop_ids, pad_id=int(pad_id), mesh=mesh,
                attend_slots=window)
