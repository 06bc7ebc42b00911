"""Tests for rlef_jax.model: RoPE table vs transformers, parameter counts, scan/remat equivalence,
KV-cache decoding vs the full forward pass, bfloat16 compute, the value model, logical axes."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from rlef_jax import logprobs
from rlef_jax import model as M
from rlef_jax import sharding
from jax.sharding import PartitionSpec as P

TINY = M.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                     num_kv_heads=2, rope_theta=10000.0)
PARAM_AXES = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm", "layers", None}


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  return jax.jit(M.Llama(cfg).apply)


def _params(cfg, seed=0):
  init = jax.jit(lambda key: nn.meta.unbox(M.Llama(cfg).init(key, jnp.zeros((1, 4), jnp.int32))))
  return init(jax.random.key(seed))["params"]


def _tokens(seed, shape, vocab=TINY.vocab_size):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


@pytest.mark.parametrize("scaling", [None, M.RopeScaling(8.0, 1.0, 4.0, 8192),
                                     M.RopeScaling(32.0, 1.0, 4.0, 8192)])
@pytest.mark.parametrize("head_dim,theta", [(64, 500000.0), (128, 500000.0), (16, 10000.0)])
def test_rope_inv_freq_equals_transformers(scaling, head_dim, theta):
  cfg = M.LlamaConfig(vocab_size=8, hidden_size=head_dim * 2, intermediate_size=8, num_layers=1,
                      num_heads=2, num_kv_heads=1, rope_theta=theta, rope_scaling=scaling)
  rope = {"rope_type": "default", "rope_theta": theta}
  if scaling is not None:
    rope = {"rope_type": "llama3", "rope_theta": theta, **dataclasses.asdict(scaling)}
  hf_cfg = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2,
                                    max_position_embeddings=131072, rope_parameters=rope)
  if scaling is None:
    want, _ = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding \
        .compute_default_rope_parameters(hf_cfg)
  else:
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg)
  got = M.rope_inv_freq(cfg)
  assert got.dtype == np.float32 and got.shape == (head_dim // 2,)
  np.testing.assert_array_equal(got, want.numpy())


def test_llama3_scaling_changes_only_low_frequencies():
  plain = dataclasses.replace(TINY, rope_theta=500000.0)
  scaled = dataclasses.replace(plain, rope_scaling=M.RopeScaling(8.0, 1.0, 4.0, 8192))
  f0, f1 = M.rope_inv_freq(plain), M.rope_inv_freq(scaled)
  wavelen = 2 * np.pi / f0
  np.testing.assert_array_equal(f1[wavelen < 2048], f0[wavelen < 2048])
  np.testing.assert_allclose(f1[wavelen > 8192], f0[wavelen > 8192] / 8, rtol=1e-6)
  assert (wavelen > 8192).any() and (wavelen < 2048).any()


@pytest.mark.parametrize("scan", [False, True])
def test_num_params_llama31_8b_and_70b(scan):
  common = dict(vocab_size=128256, num_kv_heads=8, scan_layers=scan,
                rope_scaling=M.RopeScaling(8.0, 1.0, 4.0, 8192))
  b8 = M.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, **common)
  b70 = M.LlamaConfig(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                      **common)
  assert b8.num_params() == 8_030_261_248
  assert b70.num_params() == 70_553_706_496


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("scan", [False, True])
def test_num_params_equals_the_initialised_shapes(tied, scan):
  """`LlamaConfig.num_params` is a formula; the module's own abstract params must agree with it."""
  import math
  cfg = dataclasses.replace(TINY, tie_word_embeddings=tied, scan_layers=scan, head_dim=12)
  shapes = jax.eval_shape(lambda: M.Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  assert cfg.num_params() == sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def test_num_params_tied_counts_embedding_once():
  tied = dataclasses.replace(TINY, tie_word_embeddings=True)
  assert TINY.num_params() - tied.num_params() == TINY.vocab_size * TINY.hidden_size
  assert "lm_head" not in _params(tied)


def test_param_tree_shapes_and_logical_axes():
  boxed = M.Llama(TINY).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
  p = nn.meta.unbox(boxed)
  D, H, K, Dh, F = 64, 4, 2, 16, 96
  assert p["layers_0"]["attn"]["q"]["kernel"].shape == (D, H, Dh)
  assert p["layers_0"]["attn"]["k"]["kernel"].shape == (D, K, Dh)
  assert p["layers_0"]["attn"]["o"]["kernel"].shape == (H, Dh, D)
  assert p["layers_0"]["mlp"]["down"]["kernel"].shape == (F, D)
  assert p["lm_head"]["kernel"].shape == (D, TINY.vocab_size)
  specs = nn.get_partition_spec(boxed)
  for spec, leaf in zip(jax.tree.leaves(specs), jax.tree.leaves(p)):
    assert len(spec) == leaf.ndim and set(spec) <= PARAM_AXES
  scan = M.Llama(dataclasses.replace(TINY, scan_layers=True)).init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"]
  for spec in jax.tree.leaves(nn.get_partition_spec(scan["layers"])):
    assert spec[0] == "layers"


def test_scan_and_remat_match_plain_forward_and_grads():
  params = _params(TINY)
  tokens = _tokens(1, (2, 11))

  def loss(cfg, p):
    logits, _ = M.Llama(cfg).apply({"params": p}, tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  grad = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg), has_aux=True))
  (l0, logits0), g0 = grad(TINY)(params)
  for remat, scan, policy in [(True, False, "nothing_saveable"), (False, True, "nothing_saveable"),
                              (True, True, "nothing_saveable"), (True, True, "dots_with_no_batch_dims_saveable"),
                              (True, False, "dots_saveable")]:
    cfg = dataclasses.replace(TINY, remat=remat, scan_layers=scan, remat_policy=policy)
    p = M.stack_layers(params) if scan else params
    (l1, logits1), g1 = grad(cfg)(p)
    np.testing.assert_allclose(logits1, logits0, atol=1e-5)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    want = M.stack_layers(g0) if scan else g0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, want)


def test_remat_policy_decides_what_the_backward_pass_keeps():
  """model.remat_policy reaches the compiled program: over scanned layers, keeping the weight matmuls'
  outputs holds more for the backward pass than keeping nothing, and no remat holds more still."""
  cfg = dataclasses.replace(TINY, num_layers=4, scan_layers=True)
  params = M.stack_layers(_params(dataclasses.replace(cfg, scan_layers=False)))
  tokens = _tokens(1, (4, 64))

  def temp_bytes(**changes):
    model = M.Llama(dataclasses.replace(cfg, **changes))
    loss = lambda p: jnp.mean(model.apply({"params": p}, tokens)[0])
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  nothing = temp_bytes(remat=True, remat_policy="nothing_saveable")
  dots = temp_bytes(remat=True, remat_policy="dots_with_no_batch_dims_saveable")
  plain = temp_bytes(remat=False)
  assert nothing < dots < plain, (nothing, dots, plain)


@pytest.mark.parametrize("attention,scan", [("dot_product", False), ("xla", True)])
def test_dot_product_attention_matches_the_einsum_path_in_logits_and_grads(attention, scan):
  """`model.attention` other than "einsum" (jax.nn.dot_product_attention: causal, GQA without
  repeated K/V; on the CPU its XLA implementation) is the same model: logits and gradients of a
  right-padded batch, unrolled or scanned with remat."""
  params = _params(TINY)
  tokens = _tokens(2, (3, 13)).at[1, 9:].set(0)

  def loss(cfg, p):
    logits, _ = M.Llama(cfg).apply({"params": p}, tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5]), logits

  grad = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg), has_aux=True))
  (l0, logits0), g0 = grad(TINY)(params)
  cfg = dataclasses.replace(TINY, attention=attention, remat=scan, scan_layers=scan)
  p = M.stack_layers(params) if scan else params
  (l1, logits1), g1 = grad(cfg)(p)
  np.testing.assert_allclose(logits1, logits0, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  want = M.stack_layers(g0) if scan else g0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), g1, want)


@pytest.mark.parametrize("block,length,scan", [
    (4, 13, False), pytest.param(64, 150, True, marks=pytest.mark.slow)])  # slow: the suite's 15 min
def test_blocked_attention_is_the_einsum_path_in_logits_and_grads(monkeypatch, block, length, scan):
  """`model.attention = "blocked"` (query blocks, each over the keys up to its end) is the same
  model as the one-block einsum path: logits and gradients of a right-padded batch whose length is
  not a multiple of the block (a partial last block), unrolled, or scanned with remat."""
  from rlef_jax import layers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(layers, "ATTENTION_BLOCK", block)
  params = _params(TINY)
  tokens = _tokens(4, (3, length)).at[1, length - 5:].set(0)

  def loss(cfg, p):
    logits, _ = M.Llama(cfg).apply({"params": p}, tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5]), logits

  grad = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg), has_aux=True))
  (l0, logits0), g0 = grad(TINY)(params)
  cfg = dataclasses.replace(TINY, attention="blocked", remat=scan, scan_layers=scan)
  (l1, logits1), g1 = grad(cfg)(M.stack_layers(params) if scan else params)
  assert -(-length // block) >= 3  # several blocks, the last one partial
  np.testing.assert_allclose(logits1, logits0, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  want = M.stack_layers(g0) if scan else g0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), g1, want)
  # Causal across blocks: changing token 1 leaves position 0 as it was and moves position 1.
  bad = jax.jit(lambda p: M.Llama(cfg).apply({"params": p}, tokens.at[:, 1].add(1))[0])(
      M.stack_layers(params) if scan else params)
  assert float(jnp.max(jnp.abs(bad[:, 0] - logits1[:, 0]))) == 0.0
  assert float(jnp.max(jnp.abs(bad[:, 1] - logits1[:, 1]))) > 1e-3


def test_dot_product_attention_in_bfloat16_tracks_float32():
  params = _params(TINY)
  tokens = _tokens(3, (2, 17))
  want = _apply(TINY)({"params": params}, tokens)[0]
  for attention in ("einsum", "dot_product"):
    cfg = dataclasses.replace(TINY, dtype="bfloat16", attention=attention)
    got = _apply(cfg)({"params": params}, tokens)[0]
    assert float(jnp.max(jnp.abs(got - want))) < 0.05 * float(jnp.max(jnp.abs(want))), attention


def _row_logits(cfg, params, row):
  logits, _ = _apply(cfg)({"params": params}, jnp.asarray(row, jnp.int32)[None])
  return np.asarray(logits[0])


@pytest.mark.parametrize("scan", [False, True])
def test_padded_prefill_then_decode_matches_full_forward(scan):
  """Decoding runs unrolled: a scan-trained model's params are unstacked for it (sampler.prepare)."""
  cfg = dataclasses.replace(TINY, scan_layers=scan)
  params = _params(TINY, seed=3)
  params = M.stack_layers(params) if scan else params
  apply = _apply(M.decoding_config(cfg))
  full_params, params = params, M.unstack_layers(params)
  lengths = [5, 9, 2]
  rows = [list(np.asarray(_tokens(10 + b, (n + 4,)))) for b, n in enumerate(lengths)]
  prompt = np.zeros((3, 9), np.int32)
  for b, n in enumerate(lengths):
    prompt[b, :n] = rows[b][:n]
  cache = M.init_cache(cfg, 3, 16)
  logits, cache = apply({"params": params}, jnp.asarray(prompt), cache,
                        jnp.asarray(lengths, jnp.int32))
  np.testing.assert_array_equal(cache.lengths_B, lengths)
  full = [_row_logits(cfg, full_params, r) for r in rows]
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(logits[b, :n], full[b][:n], atol=1e-5)
  for step in range(4):
    token = jnp.asarray([[rows[b][n + step]] for b, n in enumerate(lengths)], jnp.int32)
    logits, cache = apply({"params": params}, token, cache)
    for b, n in enumerate(lengths):
      np.testing.assert_allclose(logits[b, 0], full[b][n + step], atol=1e-5)
  np.testing.assert_array_equal(cache.lengths_B, np.asarray(lengths) + 4)


def test_three_chunk_conversation_matches_full_forward():
  """A multi-turn dialogue (paper §2.1) extended chunk by chunk, rows of different chunk lengths."""
  cfg = dataclasses.replace(TINY, tie_word_embeddings=True)
  params = _params(cfg, seed=4)
  apply = _apply(cfg)
  chunk_lengths = [[4, 7], [6, 1], [3, 5]]
  rows = [np.asarray(_tokens(20 + b, (sum(c[b] for c in chunk_lengths),))) for b in range(2)]
  cache = M.init_cache(cfg, 2, 24)
  starts = [0, 0]
  got = [[], []]
  for chunk in chunk_lengths:
    tokens = np.zeros((2, max(chunk)), np.int32)
    for b in range(2):
      tokens[b, :chunk[b]] = rows[b][starts[b]:starts[b] + chunk[b]]
    logits, cache = apply({"params": params}, jnp.asarray(tokens), cache,
                          jnp.asarray(chunk, jnp.int32))
    for b in range(2):
      got[b].append(np.asarray(logits[b, :chunk[b]]))
      starts[b] += chunk[b]
  for b in range(2):
    np.testing.assert_allclose(np.concatenate(got[b]), _row_logits(cfg, params, rows[b]), atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_at_positions_equal_the_full_logits_there(tied):
  """`logits_at_B` (the sampler's prefill) gives exactly the full forward's logits at those positions,
  with and without a cache, and leaves the cache as the full call does."""
  cfg = dataclasses.replace(TINY, tie_word_embeddings=tied)
  params = _params(cfg, seed=6)
  apply = _apply(cfg)
  tokens = _tokens(31, (3, 7))
  at = jnp.asarray([6, 0, 3], jnp.int32)
  full, _ = apply({"params": params}, tokens)
  picked, cache = apply({"params": params}, tokens, None, None, at)
  assert picked.shape == (3, 1, cfg.vocab_size) and cache is None
  np.testing.assert_allclose(picked[:, 0], full[jnp.arange(3), at], atol=1e-6)
  num_new = jnp.asarray([7, 2, 5], jnp.int32)
  full_c, cache_full = apply({"params": params}, tokens, M.init_cache(cfg, 3, 12), num_new)
  picked_c, cache_at = apply({"params": params}, tokens, M.init_cache(cfg, 3, 12), num_new, num_new - 1)
  np.testing.assert_allclose(picked_c[:, 0], full_c[jnp.arange(3), num_new - 1], atol=1e-6)
  for a, b in zip(jax.tree.leaves(cache_full), jax.tree.leaves(cache_at)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tied,chunk", [(False, 4), (True, 3), (False, 64)])
def test_chunked_token_logprobs_equal_the_full_computation(tied, chunk):
  """`token_logprobs(chunk=...)` (logits a chunk at a time, under jax.checkpoint) gives the full
  forward's log-probs, entropies and gradients; L - 1 = 10 is not a multiple of the chunk."""
  cfg = dataclasses.replace(TINY, tie_word_embeddings=tied)
  model = M.Llama(cfg)
  params = _params(cfg, seed=8)
  tokens = _tokens(41, (2, 11))
  weights = jax.random.normal(jax.random.key(3), (2, 2, 11))

  def objective(p, c):
    logp, entropy = logprobs.token_logprobs(model, p, tokens, chunk=c)
    return jnp.sum(weights[0] * logp) + jnp.sum(weights[1] * entropy), (logp, entropy)

  (want, (logp, entropy)), want_grads = jax.value_and_grad(objective, has_aux=True)(params, 0)
  (got, (logp_c, entropy_c)), got_grads = jax.jit(
      jax.value_and_grad(objective, has_aux=True), static_argnums=1)(params, chunk)
  full, _ = _apply(cfg)({"params": params}, tokens)
  lse = jax.nn.logsumexp(full[:, :-1], axis=-1)
  picked = jnp.take_along_axis(full[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(logp[:, 1:], picked - lse, atol=1e-5)  # the reference is the model
  np.testing.assert_array_equal(logp_c[:, 0], 0.0)
  np.testing.assert_allclose(logp_c, logp, atol=1e-5)
  np.testing.assert_allclose(entropy_c, entropy, atol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(want_grads), jax.tree.leaves(got_grads)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)  # float32 summation order


def test_right_padding_does_not_change_full_forward():
  params = _params(TINY)
  row = np.asarray(_tokens(5, (6,)))
  padded = np.concatenate([row, np.full(5, 7, np.int32)])
  a = _row_logits(TINY, params, row)
  b = _row_logits(TINY, params, padded)
  np.testing.assert_allclose(b[:6], a, atol=1e-5)


def test_bfloat16_compute_and_params_track_float32():
  params = _params(TINY, seed=5)
  tokens = _tokens(6, (2, 12))
  want, _ = _apply(TINY)({"params": params}, tokens)
  for param_dtype in ["float32", "bfloat16"]:
    cfg = dataclasses.replace(TINY, dtype="bfloat16", param_dtype=param_dtype)
    p = jax.tree.map(lambda x: x.astype(cfg.param_jnp_dtype), params)
    logits, _ = _apply(cfg)({"params": p}, tokens)
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    err = np.abs(np.asarray(logits) - np.asarray(want)).max()
    assert err < 0.1 * np.abs(np.asarray(want)).max(), err
    cache = M.init_cache(cfg, 2, 16)
    assert {x.dtype for x in jax.tree.leaves((cache.keys, cache.values))} == {jnp.dtype(jnp.bfloat16)}
    _, cache = _apply(cfg)({"params": p}, tokens, cache)
    assert {x.dtype for x in jax.tree.leaves((cache.keys, cache.values))} == {jnp.dtype(jnp.bfloat16)}


def test_bfloat16_copy_of_the_params_gives_the_same_bfloat16_forward():
  """config.rl.reference_dtype: in bf16 compute every weight is cast to bf16 before use, so a bf16
  copy of the params (`cast_floating`, the frozen reference's storage) gives the same logits."""
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  params = _params(TINY, seed=5)
  half = M.cast_floating(params, "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}
  assert M.cast_floating(half, "bfloat16")["embed"]["embedding"] is half["embed"]["embedding"]
  tokens = _tokens(6, (2, 12))
  want, _ = _apply(cfg)({"params": params}, tokens)
  got, _ = _apply(cfg)({"params": half}, tokens)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_value_model_is_policy_backbone_with_linear_head():
  policy = _params(TINY, seed=7)
  vp = M.value_params_from_policy(policy, jax.random.key(1), TINY)
  assert set(vp) == {"backbone", "value_head"} and "lm_head" not in vp["backbone"]
  assert vp["value_head"]["kernel"].shape == (TINY.hidden_size, 1)
  assert np.abs(vp["value_head"]["kernel"]).max() > 0
  init = nn.meta.unbox(M.LlamaValue(TINY).init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
  assert jax.tree.structure(init["params"]) == jax.tree.structure(vp)
  for a, b in zip(jax.tree.leaves(vp["backbone"]),
                  jax.tree.leaves({k: v for k, v in policy.items() if k != "lm_head"})):
    np.testing.assert_array_equal(a, b)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
  j = 13
  vp["value_head"] = {"kernel": policy["lm_head"]["kernel"][:, j:j + 1], "bias": jnp.zeros((1,))}
  tokens = _tokens(8, (2, 9))
  values = jax.jit(M.LlamaValue(TINY).apply)({"params": vp}, tokens)
  logits, _ = _apply(TINY)({"params": policy}, tokens)
  assert values.shape == (2, 9) and values.dtype == jnp.float32
  np.testing.assert_allclose(values, logits[..., j], atol=1e-5)


def test_forward_under_sharding_rules_matches_unsharded():
  """The model's logical names resolve through rlef_jax.sharding's table on a 2x2x2 CPU mesh."""
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  cfg = dataclasses.replace(TINY, scan_layers=True, vocab_size=96)
  params = _params(cfg)
  tokens = _tokens(9, (4, 8), vocab=96)
  want, _ = _apply(cfg)({"params": params}, tokens)
  sharded = sharding.shard_params(params, sharding.param_shardings(M.Llama(cfg), mesh))
  assert sharded["layers"]["attn"]["q"]["kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
  with sharding.use_mesh(mesh):
    logits, _ = jax.jit(M.Llama(cfg).apply)({"params": sharded}, tokens)
  np.testing.assert_allclose(logits, want, atol=1e-5)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  # Decoding: the unrolled model on the unstacked params, a per-layer cache sharded like activations.
  dec = M.decoding_config(cfg)
  dec_params = sharding.shard_params(M.unstack_layers(params), sharding.param_shardings(M.Llama(dec), mesh))
  cache = sharding.init_cache(dec, 4, 8, mesh)
  with sharding.use_mesh(mesh):
    logits, cache = jax.jit(M.Llama(dec).apply)({"params": dec_params}, tokens, cache)
  np.testing.assert_allclose(logits, want, atol=1e-5)
  assert all(x.sharding.spec[:2] == (("data", "fsdp"), "tensor") for x in cache.keys + cache.values)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(hidden_size=66), "set head_dim"),
    (dict(dtype="float16"), "dtype"),
    (dict(num_layers=0), "num_layers"),
    (dict(head_dim=7), "head_dim"),
    (dict(attention="flash"), "attention must be one of"),
])
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, head_dim=None, **kwargs) if "head_dim" not in kwargs else \
        dataclasses.replace(TINY, **kwargs)


def test_decoding_needs_unrolled_layers_and_a_cache_per_layer():
  cfg = dataclasses.replace(TINY, scan_layers=True)
  stacked = M.stack_layers(_params(TINY))
  with pytest.raises(ValueError, match="unrolled"):
    M.Llama(cfg).apply({"params": stacked}, _tokens(0, (2, 3)), M.init_cache(TINY, 2, 8))
  with pytest.raises(ValueError, match="unrolled"):
    M.Llama(TINY).apply({"params": _params(TINY)}, _tokens(0, (2, 3)),
                        M.init_cache(dataclasses.replace(TINY, num_layers=1), 2, 8))
  unstacked = M.unstack_layers(stacked)
  for a, b in zip(jax.tree.leaves(unstacked), jax.tree.leaves(_params(TINY))):
    np.testing.assert_array_equal(a, b)
  assert M.decoding_config(dataclasses.replace(cfg, remat=True)) == dataclasses.replace(TINY, remat=False)


def test_attend_slots_and_grown_cache_leave_the_logits_unchanged():
  """Attention over only the first W slots (every position below W), and a cache grown between calls,
  give the same logits as attention over the whole cache."""
  params = _params(TINY, seed=12)
  apply = _apply(TINY)
  prompt = _tokens(41, (2, 5))
  steps = _tokens(42, (2, 6))
  want, _ = apply({"params": params}, jnp.concatenate([prompt, steps], axis=1))
  _, cache = apply({"params": params}, prompt, M.init_cache(TINY, 2, 8))
  cache = M.grow_cache(cache, capacity=64)
  assert cache.capacity == 64 and all(k.shape[3] == v.shape[2] == 64 for k, v in zip(cache.keys, cache.values))
  window = 16  # < capacity; every position stays below it
  step = jax.jit(M.Llama(TINY).apply, static_argnames="attend_slots")
  for i in range(6):
    logits, cache = step({"params": params}, steps[:, i:i + 1], cache, attend_slots=window)
    np.testing.assert_allclose(logits[:, 0], want[:, 5 + i], atol=1e-5)


def test_call_rejects_mismatched_cache():
  params = _params(TINY)
  with pytest.raises(ValueError, match="cache batch size"):
    M.Llama(TINY).apply({"params": params}, _tokens(0, (2, 3)), M.init_cache(TINY, 3, 8))
  with pytest.raises(ValueError, match="only meaningful with a cache"):
    M.Llama(TINY).apply({"params": params}, _tokens(0, (2, 3)), None, jnp.ones(2, jnp.int32))
